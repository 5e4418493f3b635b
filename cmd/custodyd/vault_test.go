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
