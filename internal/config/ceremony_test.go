package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCeremonyConfig(t *testing.T) {
	t.Parallel()
	if !Default().Ceremony.AutoGenesisOn() {
		t.Fatal("auto_genesis must default to true (first-run demo)")
	}
	dir := t.TempDir()
	write := func(body string) string {
		p := filepath.Join(dir, "c.json")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	c, err := Load(write(`{"ceremony": {"officers_file": "officers.json", "so_pin_file": "so.pin", "output_dir": "/var/lib/custody/ceremonies", "auto_genesis": false}}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Ceremony.OfficersFile != filepath.Join(dir, "officers.json") || c.Ceremony.SOPINFile != filepath.Join(dir, "so.pin") ||
		c.Ceremony.OutputDir != "/var/lib/custody/ceremonies" || c.Ceremony.AutoGenesisOn() {
		t.Fatalf("ceremony section: %+v", c.Ceremony)
	}
	for body, field := range map[string]string{
		`{"ceremony": {"officers_file": "o.json", "so_pin_file": "so.pin"}}`: "ceremony.output_dir",
		`{"ceremony": {"officers_file": "o.json", "output_dir": "out"}}`:     "ceremony.so_pin_file",
		`{"ceremony": {"output_dir": "out"}}`:                                "ceremony.officers_file",
		`{"ceremony": {"officers_file": "o.json", "auto_genesis": "yes"}}`:   "auto_genesis",
		`{"ceremony": {"officers_file": "o.json", "output": "out", "x": 1}}`: "output",
	} {
		if _, err := Load(write(body)); err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: err = %v; want it to name %s", body, err, field)
		}
	}
}
