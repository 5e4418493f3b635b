package main

import (
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestServesBeforeVault: with a vault section whose Vault is not there yet
// (nothing listens on its port, no token file: the first run while its dev
// Vault builds), custodyd starts and serves; an audit decrypt is refused
// with vault_unavailable and the status file's note, never opened.
func TestServesBeforeVault(t *testing.T) {
	d := setup(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // a port nothing listens on
	writeFile(t, filepath.Join(d.dir, "status"), "the dev Vault is still building (3 min so far, about 12 min left)\n")
	var cfg map[string]any
	data, _ := os.ReadFile(d.config)
	json.Unmarshal(data, &cfg)
	cfg["vault"] = map[string]any{"address": "http://" + addr, "token_file": "custodyd.token", "status_file": "status",
		"signers": []map[string]string{{"name": "judge-1", "public_key": "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="}}, "quorum": 1}
	// Participant status checks (on with a vault section) would refuse
	// the encrypt below with status_unavailable while Vault is not there
	// (TestStatusBeforeVault); this test is about audit decrypts.
	cfg["participant_status"] = map[string]any{"enabled": false}
	data, _ = json.Marshal(cfg)
	writeFile(t, d.config, string(data))
	policy := strings.Replace(rootPolicy, `"roles":["admin","application"]`, `"roles":["admin","application","auditor"]`, 1)
	policy = strings.Replace(policy, `"purposes":[{"name":"settlement","fields":["amount"]}]`, `"purposes":[{"name":"settlement","fields":["amount"]},{"name":"investigation","fields":["*"]}]`, 1)
	writeFile(t, filepath.Join(d.dir, "policy.json"), policy)
	d.start()
	d.waitLog("vault: not authenticated yet")
	if out, err := d.ctl("participants", "register", "p-1"); err != nil {
		t.Fatalf("register: %v\n%s", err, out)
	}
	enc := exec.Command(filepath.Join(binDir, "custodyctl"), "--socket", d.socket, "--json", "encrypt", "-")
	enc.Stdin = strings.NewReader(`{"transaction_id":"tx-1","job_id":"j","confidential":{"amount":"1"},"participants":["p-1"]}`)
	sealed, err := enc.Output()
	if err != nil {
		t.Fatalf("encrypt: %v", err)
	}
	envFile := filepath.Join(d.dir, "sealed.json")
	writeFile(t, envFile, string(sealed))
	out, err := d.ctl("audit", "decrypt", "--envelope-file", envFile, "--order", "order-1", "--purpose", "investigation")
	if err == nil || !strings.Contains(out, "vault_unavailable") || !strings.Contains(out, "still building (3 min so far, about 12 min left)") {
		t.Fatalf("audit decrypt before Vault: %v\n%s", err, out)
	}
	d.signal(syscall.SIGTERM)
	<-d.done
}

// TestStatusBeforeVault: with a vault section whose Vault is not there,
// participant status checks are on and fail closed: sealing for a
// participant is refused with status_unavailable (never sealed on an
// unknown status), and health says the checks are on.
func TestStatusBeforeVault(t *testing.T) {
	d := setup(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	var cfg map[string]any
	data, _ := os.ReadFile(d.config)
	json.Unmarshal(data, &cfg)
	cfg["vault"] = map[string]any{"address": "http://" + addr, "token_file": "custodyd.token",
		"signers": []map[string]string{{"name": "judge-1", "public_key": "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="}}, "quorum": 1}
	cfg["participant_status"] = map[string]any{"cache_ttl": "1s", "max_stale": "5s"}
	data, _ = json.Marshal(cfg)
	writeFile(t, d.config, string(data))
	d.start()
	d.waitLog("vault: not authenticated yet")
	if out, err := d.ctl("participants", "register", "p-1"); err != nil {
		t.Fatalf("register: %v\n%s", err, out)
	}
	enc := exec.Command(filepath.Join(binDir, "custodyctl"), "--socket", d.socket, "encrypt", "-")
	enc.Stdin = strings.NewReader(`{"transaction_id":"tx-1","job_id":"j","confidential":{"amount":"1"},"participants":["p-1"]}`)
	out, err := enc.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "custodyctl: status_unavailable:") {
		t.Fatalf("encrypt with the status unknown: %v\n%s", err, out)
	}
	out2, _ := d.ctl("health")
	if !strings.Contains(out2, "participant status: on:") {
		t.Fatalf("health: %s", out2)
	}
	d.signal(syscall.SIGTERM)
	<-d.done
}
