// pulumi-resource-postgresql: the Pulumi resource provider plugin for the
// "postgresql" package, bridged from cyrilgdn/terraform-provider-postgresql
// (mapping: ./provider). Built by scripts/build-pulumi-tools.sh in a scratch
// copy of this module, next to a generated schema-embed.json (the Pulumi
// schema from ./cmd/pulumi-tfgen-postgresql, never committed).
package main

import (
	_ "embed"
	"fmt"
	"os"

	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfbridge"

	"local/pulumi-resource-postgresql/provider"
	"local/pulumi-resource-postgresql/version"
)

//go:embed schema-embed.json
var pulumiSchema []byte

func main() {
	if err := provider.CheckVersion(); err != nil {
		fmt.Fprintln(os.Stderr, "pulumi-resource-postgresql:", err)
		os.Exit(1)
	}
	tfbridge.Main("postgresql", version.Version, provider.Provider(), pulumiSchema)
}
