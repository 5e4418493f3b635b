package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestNoCgo checks that custodyctl's dependency graph holds neither
// custody/hsm nor any other package with cgo files outside the standard
// library (whose cgo parts have pure-Go fallbacks): the client links no C
// and builds with CGO_ENABLED=0 (make lint builds it so). The graph is
// listed as a cgo build sees it, where hsm and its PKCS#11 binding are cgo
// packages.
func TestNoCgo(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}} {{.Standard}} {{len .CgoFiles}}", ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	seen := map[string]bool{}
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) != 3 {
			t.Fatalf("go list: unexpected line %q", line)
		}
		path, std, cgoFiles := f[0], f[1] == "true", f[2]
		seen[path] = true
		if path == "custody/hsm" || strings.HasPrefix(path, "custody/hsm/") {
			t.Errorf("custodyctl depends on %s (the PKCS#11 driver); use custody/internal/device", path)
		}
		if !std && cgoFiles != "0" {
			t.Errorf("custodyctl depends on %s, which has %s cgo files", path, cgoFiles)
		}
	}
	// The list is the real graph: it has the packages custodyctl is built on.
	for _, p := range []string{"custody/cmd/custodyctl", "custody/internal/envelope", "custody/internal/device"} {
		if !seen[p] {
			t.Errorf("go list -deps does not show %s", p)
		}
	}
}
