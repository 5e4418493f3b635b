package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"custody/internal/orders/vaulttest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	vaulttest.Stop()
	os.Exit(code)
}

// TestOrderCommands runs the intake scenario against a real Vault: two
// signers make keys, intake creates an order from flags with a document
// hashed locally, both sign, show and list see it, revoke writes once; a
// token without the intake policy is refused by Vault.
func TestOrderCommands(t *testing.T) {
	vs := vaulttest.Shared(t)
	dir := t.TempDir()
	intake := vaulttest.TokenFile(t, vs.Token(t, "legal-intake"))
	daemon := vaulttest.TokenFile(t, vs.Token(t, "custodyd"))
	ctl := func(want int, args ...string) string {
		t.Helper()
		var out, errb bytes.Buffer
		if code := run(args, strings.NewReader(""), &out, &errb); code != want {
			t.Fatalf("custodyctl %v: exit %d, want %d\n%s%s", args, code, want, out.String(), errb.String())
		}
		return out.String() + errb.String()
	}
	vault := func(tok string) []string { return []string{"--vault-addr", vs.Addr, "--vault-token-file", tok} }

	for _, name := range []string{"judge-a", "judge-b"} {
		out := ctl(0, "order", "keygen", "--out", filepath.Join(dir, name+".key"), "--name", name)
		var pin struct {
			Name      string `json:"name"`
			PublicKey string `json:"public_key"`
		}
		if err := json.Unmarshal([]byte(out), &pin); err != nil || pin.PublicKey == "" {
			t.Fatalf("keygen printed %q", out)
		}
		if fi, _ := os.Stat(filepath.Join(dir, name+".key")); fi.Mode().Perm() != 0o400 {
			t.Fatalf("key file mode %v", fi.Mode())
		}
	}
	ctl(1, "order", "keygen", "--out", filepath.Join(dir, "judge-a.key"), "--name", "judge-a") // never overwrites

	doc := filepath.Join(dir, "order.pdf")
	os.WriteFile(doc, []byte("%PDF the court's order"), 0o600)
	id := "order-ctl-" + vaulttest.Random(4)
	create := append([]string{"order", "create"}, append([]string{"--id", id, "--auditor", "auditor-a", "--purpose", "tax-investigation",
		"--authority", "District Court Example", "--document", doc, "--not-before", "2026-01-01T00:00:00Z", "--not-after", "2030-01-01T00:00:00Z",
		"--max-uses", "3", "--transactions", "tx-2,tx-1"}, vault(intake)...)...)
	if out := ctl(0, create...); !strings.Contains(out, "created order "+id) {
		t.Fatal(out)
	}
	ctl(1, create...) // the id is taken
	for _, name := range []string{"judge-a", "judge-b"} {
		ctl(0, append([]string{"order", "sign", id, "--key", filepath.Join(dir, name+".key")}, vault(intake)...)...)
	}
	out := ctl(0, append([]string{"--json", "order", "show", id}, vault(intake)...)...)
	var shown struct {
		Version int
		Record  struct {
			Order struct {
				DocumentSHA256 string `json:"document_sha256"`
			}
			Signatures []struct{ Signer string }
		}
	}
	if err := json.Unmarshal([]byte(out), &shown); err != nil || shown.Version != 3 || len(shown.Record.Signatures) != 2 ||
		shown.Record.Order.DocumentSHA256 != fmt.Sprintf("%x", sha256.Sum256([]byte("%PDF the court's order"))) {
		t.Fatalf("show: %v %s", err, out)
	}
	if out := ctl(0, append([]string{"order", "list"}, vault(intake)...)...); !strings.Contains(out, id) {
		t.Fatalf("list: %s", out)
	}
	// The daemon's token may read orders but Vault refuses it everything the intake does.
	if out := ctl(1, append([]string{"order", "revoke", id, "--reason", "test"}, vault(daemon)...)...); !strings.Contains(out, "vault refused") {
		t.Fatalf("daemon revoke: %s", out)
	}
	ctl(0, append([]string{"order", "revoke", id, "--reason", "quashed"}, vault(intake)...)...)
	ctl(1, append([]string{"order", "revoke", id, "--reason", "again"}, vault(intake)...)...)
	if out := ctl(0, append([]string{"order", "show", id}, vault(intake)...)...); !strings.Contains(out, "REVOKED") {
		t.Fatalf("show after revoke: %s", out)
	}
	// A token file readable by others is refused before any request.
	os.Chmod(intake, 0o644)
	if out := ctl(1, append([]string{"order", "list"}, vault(intake)...)...); !strings.Contains(out, "mode") {
		t.Fatalf("0644 token file: %s", out)
	}
}
