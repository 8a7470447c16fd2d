// Package provider maps the Terraform provider cyrilgdn/terraform-provider-postgresql
// onto the Pulumi package "postgresql", with the tokens and property names that
// the published SDKs (e.g. PyPI pulumi_postgresql) use:
//
//	postgresql_role               -> postgresql:index/role:Role
//	postgresql_grant_role         -> postgresql:index/grantRole:GrantRole
//	postgresql_default_privileges -> postgresql:index/defaultPrivileges:DefaultPrivileges
//	                                 (+ the deprecated postgresql:index/defaultPrivileg:DefaultPrivileg)
//
// Property names come from the bridge's standard TF->Pulumi naming
// (connect_timeout -> connectTimeout, search_path -> searchPaths).
package provider

import (
	"errors"

	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfbridge"
	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfbridge/tokens"
	shimv2 "github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfshim/sdk-v2"
	"github.com/terraform-providers/terraform-provider-postgresql/postgresql"

	"local/pulumi-resource-postgresql/version"
)

const (
	pkgName = "postgresql"
	modName = "index" // every resource and function lives in the single "index" module
)

// ErrUnstamped is returned by CheckVersion for a binary built without -ldflags -X.
var ErrUnstamped = errors.New("version not stamped: build with " +
	"-ldflags \"-X local/pulumi-resource-postgresql/version.Version=<x.y.z>\"")

// CheckVersion fails when version.Version was not set at link time.
func CheckVersion() error {
	if version.Version == "" {
		return ErrUnstamped
	}
	return nil
}

// Provider returns the bridge metadata for the postgresql provider.
func Provider() tfbridge.ProviderInfo {
	info := tfbridge.ProviderInfo{
		P:           shimv2.NewProvider(postgresql.Provider()),
		Name:        pkgName,
		Version:     version.Version,
		DisplayName: "PostgreSQL",
		Description: "A Pulumi package for creating and managing PostgreSQL resources " +
			"(bridged from cyrilgdn/terraform-provider-postgresql).",
		Keywords:   []string{"pulumi", "postgresql"},
		License:    "Apache-2.0",
		Homepage:   "https://pulumi.io",
		Repository: "https://github.com/pulumi/pulumi-postgresql",
		// Where the docs of the upstream provider live (module cyrilgdn/terraform-provider-postgresql).
		// The schema generator sets UpstreamRepoPath to the module's directory.
		GitHubOrg: "cyrilgdn",

		Config: map[string]*tfbridge.SchemaInfo{
			// Same environment defaults as the published provider.
			"sslmode": {Default: &tfbridge.DefaultInfo{EnvVars: []string{"PGSSLMODE"}}},
			"connect_timeout": {Default: &tfbridge.DefaultInfo{
				EnvVars: []string{"PGCONNECT_TIMEOUT"}, Value: 180,
			}},
		},
		Resources: map[string]*tfbridge.ResourceInfo{
			// A grant cannot be changed in place: revoke the old one first.
			"postgresql_grant": {Tok: tfbridge.MakeResource(pkgName, modName, "Grant"), DeleteBeforeReplace: true},
		},
	}

	// postgresql_default_privileges is DefaultPrivileges; the SDKs keep the old,
	// mis-singularised DefaultPrivileg as a deprecated alias of it.
	info.RenameResourceWithAlias("postgresql_default_privileges",
		tfbridge.MakeResource(pkgName, modName, "DefaultPrivileg"),
		tfbridge.MakeResource(pkgName, modName, "DefaultPrivileges"),
		modName, modName,
		&tfbridge.ResourceInfo{Docs: &tfbridge.DocInfo{Source: "postgresql_default_privileges.html.markdown"}})

	// Everything else: postgresql_foo_bar -> postgresql:index/fooBar:FooBar
	// (functions: postgresql_schemas -> postgresql:index/getSchemas:getSchemas).
	info.MustComputeTokens(tokens.SingleModule("postgresql_", modName, tokens.MakeStandard(pkgName)))

	// Names (e.g. a role's "name") become optional and default to <resource name>-<random>.
	info.SetAutonaming(255, "-")

	return info
}
