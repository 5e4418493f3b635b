package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"custody/internal/orders"
	"custody/internal/orders/vaulttest"
)

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
	out := ctl(0, create...)
	if !strings.Contains(out, "created order "+id) {
		t.Fatal(out)
	}
	sum := bodyHash(t, out)
	ctl(1, create...) // the id is taken
	for _, name := range []string{"judge-a", "judge-b"} {
		ctl(0, append([]string{"order", "sign", id, "--key", filepath.Join(dir, name+".key"), "--sha256", sum}, vault(intake)...)...)
	}
	out = ctl(0, append([]string{"--json", "order", "show", id}, vault(intake)...)...)
	var shown struct {
		Version    int
		BodySHA256 string `json:"body_sha256"`
		Record     struct {
			Order struct {
				DocumentSHA256 string `json:"document_sha256"`
			}
			Signatures []struct{ Signer string }
		}
	}
	if err := json.Unmarshal([]byte(out), &shown); err != nil || shown.Version != 3 || len(shown.Record.Signatures) != 2 || shown.BodySHA256 != sum ||
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

// bodyHash finds the "body sha256 HASH" that create, show and sign print.
func bodyHash(t *testing.T, out string) string {
	t.Helper()
	m := regexp.MustCompile(`body sha256\s+([0-9a-f]{64})`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no body sha256 in %q", out)
	}
	return m[1]
}

// TestOrderSignReview: a signer sees the body and its hash before signing
// and signs only that body. A Vault writer (another token with the intake
// policy) replaces the body after the review: the signature is refused with
// a message that says what to do, and nothing is signed.
func TestOrderSignReview(t *testing.T) {
	vs := vaulttest.Shared(t)
	dir := t.TempDir()
	intake := vaulttest.TokenFile(t, vs.Token(t, "legal-intake"))
	attacker := vs.Client(t, vs.Token(t, "legal-intake"))
	ctl := func(want int, args ...string) (string, string) {
		t.Helper()
		var out, errb bytes.Buffer
		if args[1] != "keygen" { // keygen needs no Vault and refuses its flags
			args = append(args, "--vault-addr", vs.Addr, "--vault-token-file", intake)
		}
		if code := run(args, strings.NewReader(""), &out, &errb); code != want {
			t.Fatalf("custodyctl %v: exit %d, want %d\n%s%s", args, code, want, out.String(), errb.String())
		}
		return out.String(), errb.String()
	}
	key := filepath.Join(dir, "judge-a.key")
	ctl(0, "order", "keygen", "--out", key, "--name", "judge-a")
	in := orders.NewIntake(vs.Client(t, vs.Token(t, "legal-intake")), orders.DefaultPaths)
	signers := func(id string) int {
		t.Helper()
		rec, _, _, err := in.Show(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		return len(rec.Signatures)
	}
	doc := filepath.Join(dir, "order.pdf")
	os.WriteFile(doc, []byte("%PDF the court's order"), 0o600)
	create := func(extra ...string) (string, string) {
		t.Helper()
		id := "order-rev-" + vaulttest.Random(4)
		out, _ := ctl(0, append([]string{"order", "create", "--id", id, "--auditor", "auditor-a", "--purpose", "tax-investigation",
			"--authority", "District Court Example", "--document", doc, "--not-before", "2026-01-01T00:00:00Z", "--not-after", "2030-01-01T00:00:00Z",
			"--max-uses", "3", "--transactions", "tx-1"}, extra...)...)
		return id, bodyHash(t, out)
	}

	// The review step prints the canonical body and its hash, signs
	// nothing and exits 2 with the command to run.
	id, sum := create()
	out, errOut := ctl(2, "order", "sign", id, "--key", key)
	rec, _, _, _ := in.Show(context.Background(), id)
	if bodyHash(t, out) != sum || !strings.Contains(out, string(rec.Order.Canonical())) ||
		!strings.Contains(errOut, "nothing signed") || !strings.Contains(errOut, "--sha256 "+sum) || signers(id) != 0 {
		t.Fatalf("review step:\n%s\n%s", out, errOut)
	}
	if out, _ := ctl(0, "order", "show", id); bodyHash(t, out) != sum {
		t.Fatalf("show: %s", out)
	}
	// The signer keeps a local copy of the reviewed body.
	reviewedCopy := filepath.Join(dir, "reviewed.json")
	pretty, _ := json.MarshalIndent(rec.Order, "", "  ")
	os.WriteFile(reviewedCopy, pretty, 0o600)

	// The writer swaps auditor and max_uses after the review.
	swapped := rec.Order
	swapped.Auditor, swapped.MaxUses = "mallory", 1000
	raw, _ := json.Marshal(orders.Record{Order: swapped, Signatures: []orders.Signature{}})
	var m map[string]any
	json.Unmarshal(raw, &m)
	if _, err := attacker.Logical().Write("secret/data/custody/orders/"+id, map[string]any{"data": m}); err != nil {
		t.Fatal(err)
	}
	_, errOut = ctl(1, "order", "sign", id, "--key", key, "--sha256", sum)
	if !strings.Contains(errOut, "nothing was signed") || !strings.Contains(errOut, "review it again") || signers(id) != 0 {
		t.Fatalf("sign --sha256 after the swap: %s", errOut)
	}
	_, errOut = ctl(1, "order", "sign", id, "--key", key, "--body", reviewedCopy)
	if !strings.Contains(errOut, "differs from "+reviewedCopy+" in: auditor, max_uses") || signers(id) != 0 {
		t.Fatalf("sign --body after the swap: %s", errOut)
	}
	// Reviewing the swapped body does not help: it is not the first body.
	out, errOut = ctl(1, "order", "sign", id, "--key", key)
	if !strings.Contains(errOut, "do not sign") || !strings.Contains(out, "mallory") {
		t.Fatalf("review of the swapped body:\n%s\n%s", out, errOut)
	}
	if _, errOut := ctl(1, "order", "sign", id, "--key", key, "--sha256", bodyHash(t, out)); !strings.Contains(errOut, "nothing signed") || signers(id) != 0 {
		t.Fatalf("sign the swapped body: %s", errOut)
	}
	if out, _ := ctl(0, "order", "show", id); !strings.Contains(out, "WARNING") {
		t.Fatalf("show of the swapped body: %s", out)
	}

	// Usage errors sign nothing.
	id2, sum2 := create()
	ctl(2, "order", "sign", id2, "--key", key, "--sha256", "abc")
	ctl(2, "order", "sign", id2, "--key", key, "--sha256", sum2, "--body", reviewedCopy)
	ctl(2, "order", "sign", id2, "--key", key, "--body", reviewedCopy) // a copy of another order
	ctl(2, "order", "sign", id2, "--sha256", sum2)                     // no key
	if signers(id2) != 0 {
		t.Fatal("a usage error signed")
	}
	// The reviewed body signs, by hash (upper case is fine) or by copy.
	ctl(0, "order", "sign", id2, "--key", key, "--sha256", strings.ToUpper(sum2))
	rec2, _, _, _ := in.Show(context.Background(), id2)
	copy2 := filepath.Join(dir, "reviewed2.json")
	pretty, _ = json.MarshalIndent(rec2.Order, "", "\t")
	os.WriteFile(copy2, pretty, 0o600)
	key2 := filepath.Join(dir, "judge-b.key")
	ctl(0, "order", "keygen", "--out", key2, "--name", "judge-b")
	ctl(0, "order", "sign", id2, "--key", key2, "--body", copy2)
	if signers(id2) != 2 {
		t.Fatalf("%d signatures, want 2", signers(id2))
	}

	// An amendment revokes the order it supersedes.
	id3, _ := create("--supersedes", id2)
	if out, _ := ctl(0, "order", "show", id2); !strings.Contains(out, "REVOKED") || !strings.Contains(out, "superseded by "+id3) {
		t.Fatalf("superseded order: %s", out)
	}
	if out, _ := ctl(0, "order", "show", id3); !strings.Contains(out, "supersedes") || !strings.Contains(out, "format 2") {
		t.Fatalf("amendment: %s", out)
	}
}

// TestOrderReviewNoTerminalEscapes: a Vault writer puts an escape sequence
// in the authority (to redraw the signer's terminal over max_uses) or in a
// revocation's reason; the body is refused as malformed and the reason is
// printed escaped: no raw control byte reaches the terminal.
func TestOrderReviewNoTerminalEscapes(t *testing.T) {
	vs := vaulttest.Shared(t)
	intake := vaulttest.TokenFile(t, vs.Token(t, "legal-intake"))
	attacker := vs.Client(t, vs.Token(t, "legal-intake"))
	ctl := func(want int, args ...string) string {
		t.Helper()
		var out, errb bytes.Buffer
		args = append(args, "--vault-addr", vs.Addr, "--vault-token-file", intake)
		if code := run(args, strings.NewReader(""), &out, &errb); code != want {
			t.Fatalf("custodyctl %v: exit %d, want %d\n%s%s", args, code, want, out.String(), errb.String())
		}
		return out.String() + errb.String()
	}
	id := "order-esc-" + vaulttest.Random(4)
	body := map[string]any{"version": 2, "id": id, "auditor": "auditor-a", "scope": map[string]any{"transactions": []string{"tx-1"}},
		"purpose": "tax-investigation", "document_sha256": strings.Repeat("ab", 32), "authority": "Court\x1b[2K\x1b[1Amax uses 1\u009b1A",
		"not_before": "2026-01-01T00:00:00Z", "not_after": "2030-01-01T00:00:00Z", "max_uses": 1000}
	if _, err := attacker.Logical().Write("secret/data/custody/orders/"+id, map[string]any{"data": map[string]any{"order": body, "signatures": []any{}}}); err != nil {
		t.Fatal(err)
	}
	if out := ctl(1, "order", "sign", id); !strings.Contains(out, "authority") || strings.ContainsAny(out, "\x1b\u009b") {
		t.Fatalf("review of a body with escapes: %q", out)
	}
	if out := ctl(1, "order", "show", id); strings.ContainsAny(out, "\x1b\u009b") {
		t.Fatalf("show of a body with escapes: %q", out)
	}
	// A revocation written by hand with an escape in its reason.
	id2 := "order-esc-" + vaulttest.Random(4)
	doc := filepath.Join(t.TempDir(), "doc")
	os.WriteFile(doc, []byte("doc"), 0o600)
	ctl(0, "order", "create", "--id", id2, "--auditor", "auditor-a", "--purpose", "p", "--authority", "Court", "--document", doc,
		"--not-before", "2026-01-01T00:00:00Z", "--not-after", "2030-01-01T00:00:00Z", "--max-uses", "1", "--transactions", "tx-1")
	if _, err := attacker.Logical().Write("secret/data/custody/revocations/"+id2, map[string]any{"data": map[string]any{
		"time": "2026-01-01T00:00:00Z", "reason": "quashed\x1b]0;owned\x07", "by": "x\u009b2J"}}); err != nil {
		t.Fatal(err)
	}
	if out := ctl(0, "order", "show", id2); !strings.Contains(out, "REVOKED") || strings.ContainsAny(out, "\x1b\x07\u009b") {
		t.Fatalf("show of a revocation with escapes: %q", out)
	}
}
