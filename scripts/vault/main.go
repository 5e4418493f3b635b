// Command vault is HashiCorp Vault's server and CLI, built from the Go module
// proxy for custody's tests and first run (no Vault package is reachable
// here). It is its own module so that custodyd's go.mod stays small; `go
// test ./...` at the repository root skips it. Vault is under the Business
// Source License; custody uses it only as a test and demo dependency.
// scripts/vault.sh builds, caches, starts and stops it.
package main

import (
	"os"

	"github.com/hashicorp/vault/command"
)

func main() {
	os.Exit(command.Run(os.Args[1:]))
}
