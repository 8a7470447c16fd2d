// pulumi-tfgen-postgresql writes the Pulumi package schema of ../../provider
// (what the provider binary embeds as schema-embed.json):
//
//	pulumi-tfgen-postgresql -upstream DIR -out FILE
//
// DIR is the source of cyrilgdn/terraform-provider-postgresql (its
// website/docs/ gives the descriptions). The schema's "version" is the
// stamped version.Version. HCL examples in the docs are not converted
// (that needs the Pulumi CLI's terraform converter plugin).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfgen"
	"github.com/pulumi/pulumi/sdk/v3/go/common/diag"
	"github.com/pulumi/pulumi/sdk/v3/go/common/diag/colors"

	"local/pulumi-resource-postgresql/provider"
	"local/pulumi-resource-postgresql/version"
)

func main() {
	upstream := flag.String("upstream", "", "directory of the terraform-provider-postgresql module (docs source)")
	out := flag.String("out", "", "schema file to write")
	flag.Parse()
	if *out == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: pulumi-tfgen-postgresql -upstream DIR -out FILE")
		os.Exit(2)
	}
	if err := run(*upstream, *out); err != nil {
		fmt.Fprintln(os.Stderr, "pulumi-tfgen-postgresql:", err)
		os.Exit(1)
	}
}

func run(upstream, out string) error {
	if err := provider.CheckVersion(); err != nil {
		return err
	}
	info := provider.Provider()
	if err := info.P.InternalValidate(); err != nil {
		return fmt.Errorf("internal validation of the terraform provider failed: %w", err)
	}
	if upstream != "" {
		abs, err := filepath.Abs(upstream)
		if err != nil {
			return err
		}
		info.UpstreamRepoPath = abs
	}
	sink := diag.DefaultSink(os.Stderr, os.Stderr, diag.FormatOptions{Color: colors.Never})
	res, err := tfgen.GenerateSchemaWithOptions(tfgen.GenerateSchemaOptions{
		ProviderInfo:    info,
		DiagnosticsSink: sink,
		XInMemoryDocs:   upstream == "",
	})
	if err != nil {
		return err
	}
	spec := res.PackageSpec
	spec.Version = version.Version
	data, err := json.MarshalIndent(spec, "", "    ")
	if err != nil {
		return err
	}
	tmp := out + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}
