package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// withCeremony adds a ceremony section to d's configuration.
func withCeremony(t *testing.T, d *daemon, section map[string]any) {
	t.Helper()
	var cfg map[string]any
	data, _ := os.ReadFile(d.config)
	json.Unmarshal(data, &cfg)
	cfg["ceremony"] = section
	data, _ = json.Marshal(cfg)
	writeFile(t, d.config, string(data))
}

// TestNoAutoGenesis: with ceremony.auto_genesis false the daemon creates no
// escrow key at start and says that audit decrypts wait for genesis.
func TestNoAutoGenesis(t *testing.T) {
	d := setup(t)
	withCeremony(t, d, map[string]any{"auto_genesis": false})
	d.start()
	d.waitLog("genesis ceremony has not run")
	if strings.Contains(d.log.String(), "custody/escrow/v1") {
		t.Fatalf("an escrow key was created at start:\n%s", d.log)
	}
	// Sealing needs the escrow key: refused with a code that says what to do.
	if out, err := d.ctl("participants", "register", "p-1"); err != nil {
		t.Fatalf("register: %v\n%s", err, out)
	}
	req := `{"transaction_id":"tx-1","job_id":"j","confidential":{"a":1},"participants":["p-1"]}`
	cmd := exec.Command(filepath.Join(binDir, "custodyctl"), "--socket", d.socket, "encrypt", "-")
	cmd.Stdin = strings.NewReader(req)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "genesis_required") {
		t.Errorf("encrypt before genesis: %v\n%s", err, out)
	}
	d.signal(syscall.SIGTERM)
	<-d.done
}

// TestBadOfficersFile: an officers file that does not parse stops the
// daemon at start, naming the field.
func TestBadOfficersFile(t *testing.T) {
	d := setup(t)
	writeFile(t, filepath.Join(d.dir, "officers.json"), `{"version": 1, "officers": []}`)
	withCeremony(t, d, map[string]any{"officers_file": "officers.json", "so_pin_file": "so.pin", "output_dir": "ceremonies"})
	out, err := exec.Command(filepath.Join(binDir, "custodyd"), "run", "--config", d.config).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "ceremony.officers_file") {
		t.Fatalf("started or unclear error: %v\n%s", err, out)
	}
}
