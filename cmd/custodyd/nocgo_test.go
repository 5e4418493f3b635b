package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestNoCgoBuildRefusesToStart builds custodyd with CGO_ENABLED=0 (which
// compiles: package hsm has a !cgo build) and runs it with the default
// configuration from the repository's root: it must exit non-zero at the
// token, saying that hsm needs cgo and how to build it.
func TestNoCgoBuildRefusesToStart(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "custodyd")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 go build: %v\n%s", err, out)
	}
	run := exec.Command(bin, "run")
	run.Dir = filepath.Join("..", "..")
	out, err := run.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("custodyd run = %v, want exit status 1\n%s", err, out)
	}
	const want = "custodyd: opening the token: custody/hsm needs cgo (the PKCS#11 module is a C library): build with CGO_ENABLED=1"
	if !strings.Contains(string(out), want) {
		t.Fatalf("custodyd run says\n%s\nwant %q", out, want)
	}
}
