// Package version holds the provider version. It is empty in source and set
// at link time (see scripts/build-pulumi-tools.sh):
//
//	-ldflags "-X local/pulumi-resource-postgresql/version.Version=3.18.2"
//
// No leading "v": it must equal "version" in pulumi_postgresql/pulumi-plugin.json.
package version

// Version is the provider version, stamped with -ldflags -X.
var Version string
