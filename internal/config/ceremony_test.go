package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCeremonyConfig(t *testing.T) {
	t.Parallel()
	if Default().Ceremony.AutoGenesisOn() {
		t.Fatal("auto_genesis must default to false (the first run sets it)")
	}
	dir := t.TempDir()
	write := func(body string) string {
		p := filepath.Join(dir, "c.json")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const logKey = "custody.example/log+b1fedf79+AaOPqcX5Crj9l+CwQFnQ8beQryYOrMtVUWGyMq+AwImc"
	c, err := Load(write(`{"ceremony": {"officers_file": "officers.json", "so_pin_shares": "so-pin.json", "output_dir": "/var/lib/custody/ceremonies",
		"trusted_backup_signers": ["` + logKey + `"], "min_approvals": {"rotate": 3}, "auto_genesis": true}}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Ceremony.OfficersFile != filepath.Join(dir, "officers.json") || c.Ceremony.SOPINShares != filepath.Join(dir, "so-pin.json") ||
		c.Ceremony.OutputDir != "/var/lib/custody/ceremonies" || !c.Ceremony.AutoGenesisOn() || c.Ceremony.MinApprovals["rotate"] != 3 {
		t.Fatalf("ceremony section: %+v", c.Ceremony)
	}
	for body, field := range map[string]string{
		`{"ceremony": {"officers_file": "o.json", "so_pin_shares": "s.json"}}`:                              "ceremony.output_dir",
		`{"ceremony": {"officers_file": "o.json", "output_dir": "out", "so_pin_file": "so.pin"}}`:           "so_pin_file: no longer accepted",
		`{"ceremony": {"output_dir": "out"}}`:                                                               "ceremony.officers_file",
		`{"ceremony": {"officers_file": "o.json", "auto_genesis": "yes"}}`:                                  "auto_genesis",
		`{"ceremony": {"officers_file": "o.json", "output": "out", "x": 1}}`:                                "output",
		`{"ceremony": {"officers_file": "o.json", "output_dir": "out", "min_approvals": {"restore": 1}}}`:   "min_approvals.restore",
		`{"ceremony": {"officers_file": "o.json", "output_dir": "out", "min_approvals": {"retire": 1}}}`:    "min_approvals.retire",
		`{"ceremony": {"officers_file": "o.json", "output_dir": "out", "min_approvals": {"approve": 2}}}`:   "unknown kind",
		`{"ceremony": {"officers_file": "o.json", "output_dir": "out", "trusted_backup_signers": ["x+y"]}}`: "trusted_backup_signers[0]",
	} {
		if _, err := Load(write(body)); err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: err = %v; want it to name %s", body, err, field)
		}
	}
}
