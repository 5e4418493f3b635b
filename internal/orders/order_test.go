package orders_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"custody/internal/orders"
)

// fixedOrder is a valid order with fixed content, for known-answer tests.
func fixedOrder() *orders.Order {
	from := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	until := time.Date(2026, 7, 1, 0, 0, 0, 0, time.UTC)
	return &orders.Order{
		Version: 1, ID: "order-2026-117", Auditor: "auditor-a",
		Scope:          orders.Scope{Transactions: []string{"tx-1"}, Jobs: []string{"job-7"}, CreatedFrom: &from, CreatedUntil: &until},
		Purpose:        "tax-investigation",
		DocumentSHA256: strings.Repeat("ab", 32),
		Authority:      "District Court <Example> & Co",
		NotBefore:      time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:       time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC),
		MaxUses:        3,
	}
}

// TestCanonicalKnownAnswer pins the signed encoding: changing it breaks
// every signed order, so it must not change within format version 1.
func TestCanonicalKnownAnswer(t *testing.T) {
	const want = `custody court order v1
{"version":1,"id":"order-2026-117","auditor":"auditor-a","scope":{"transactions":["tx-1"],"jobs":["job-7"],"created_from":"2026-01-01T00:00:00Z","created_until":"2026-07-01T00:00:00Z"},"purpose":"tax-investigation","document_sha256":"abababababababababababababababababababababababababababababababab","authority":"District Court <Example> & Co","not_before":"2026-11-01T00:00:00Z","not_after":"2026-12-01T00:00:00Z","max_uses":3}`
	o := fixedOrder()
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := string(o.SignedMessage()); got != want {
		t.Fatalf("signed message\n got %s\nwant %s", got, want)
	}
	back, err := orders.ParseOrder(o.Canonical())
	if err != nil || string(back.Canonical()) != string(o.Canonical()) {
		t.Fatalf("round trip: %v", err)
	}
}

func TestParseOrderRefusesNonCanonical(t *testing.T) {
	c := string(fixedOrder().Canonical())
	for name, in := range map[string]string{
		"spaces":        strings.Replace(c, `"id":`, `"id": `, 1),
		"field order":   strings.Replace(c, `{"version":1,"id":"order-2026-117",`, `{"id":"order-2026-117","version":1,`, 1),
		"offset time":   strings.Replace(c, `"not_before":"2026-11-01T00:00:00Z"`, `"not_before":"2026-11-01T01:00:00+01:00"`, 1),
		"fraction":      strings.Replace(c, `"not_before":"2026-11-01T00:00:00Z"`, `"not_before":"2026-11-01T00:00:00.5Z"`, 1),
		"unknown field": strings.Replace(c, `"max_uses":3}`, `"max_uses":3,"extra":1}`, 1),
		"duplicate key": strings.Replace(c, `"max_uses":3}`, `"max_uses":3,"max_uses":4}`, 1),
		"trailing":      c + " {}",
		"escaped":       strings.Replace(c, `<Example>`, `\u003cExample\u003e`, 1),
	} {
		if _, err := orders.ParseOrder([]byte(in)); !errors.Is(err, orders.ErrMalformed) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, c := range []struct {
		field string
		edit  func(o *orders.Order)
	}{
		{"version", func(o *orders.Order) { o.Version = 2 }},
		{"id", func(o *orders.Order) { o.ID = "a/b" }},
		{"auditor", func(o *orders.Order) { o.Auditor = "Auditor A" }},
		{"purpose", func(o *orders.Order) { o.Purpose = "" }},
		{"document_sha256", func(o *orders.Order) { o.DocumentSHA256 = strings.Repeat("AB", 32) }},
		{"authority", func(o *orders.Order) { o.Authority = "line\nbreak" }},
		{"not_after", func(o *orders.Order) { o.NotAfter = o.NotBefore }},
		{"not_before", func(o *orders.Order) { o.NotBefore = o.NotBefore.Add(time.Millisecond) }},
		{"max_uses", func(o *orders.Order) { o.MaxUses = 0 }},
		{"scope.transactions", func(o *orders.Order) { o.Scope.Transactions = []string{"b", "a"} }},
		{"scope.jobs", func(o *orders.Order) { o.Scope.Jobs = []string{} }},
		{"scope", func(o *orders.Order) { o.Scope = orders.Scope{} }},
		{"scope", func(o *orders.Order) { o.Scope.CreatedUntil = nil }},
	} {
		o := fixedOrder()
		c.edit(o)
		err := o.Validate()
		if !errors.Is(err, orders.ErrMalformed) || !strings.Contains(err.Error(), c.field+":") {
			t.Errorf("%s: %v", c.field, err)
		}
	}
}

func TestVerifier(t *testing.T) {
	a, b, c, m := newSigner("judge-a"), newSigner("judge-b"), newSigner("judge-c"), newSigner("mallory")
	v, err := orders.NewVerifier([]orders.Signer{a.pinned(), b.pinned(), c.pinned()}, 2)
	if err != nil {
		t.Fatal(err)
	}
	o := fixedOrder()
	sig := func(s signer) orders.Signature { return orders.Sign(o, s.name, s.key) }
	forged := sig(a)
	forged.Signer = "judge-b"
	for _, tc := range []struct {
		name string
		sigs []orders.Signature
		want error
	}{
		{"quorum", []orders.Signature{sig(a), sig(c)}, nil},
		{"all three", []orders.Signature{sig(c), sig(b), sig(a)}, nil},
		{"one short", []orders.Signature{sig(b)}, orders.ErrQuorum},
		{"none", nil, orders.ErrQuorum},
		{"unknown signer", []orders.Signature{sig(a), sig(b), sig(m)}, orders.ErrUnknownSigner},
		{"duplicate", []orders.Signature{sig(a), sig(a)}, orders.ErrDuplicateSigner},
		{"bad signature", []orders.Signature{sig(a), forged}, orders.ErrSignature},
	} {
		_, err := v.Verify(&orders.Record{Order: *o, Signatures: tc.sigs})
		if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	// A signature over another order does not carry over.
	o2 := fixedOrder()
	o2.MaxUses = 4
	if _, err := v.Verify(&orders.Record{Order: *o2, Signatures: []orders.Signature{sig(a), sig(b)}}); !errors.Is(err, orders.ErrSignature) {
		t.Errorf("edited body: %v", err)
	}
}

func TestScopeCovers(t *testing.T) {
	o := fixedOrder()
	at := func(s string) time.Time { v, _ := time.Parse(time.RFC3339, s); return v }
	for _, c := range []struct {
		tx, job string
		created time.Time
		want    bool
	}{
		{"tx-1", "", at("2020-01-01T00:00:00Z"), true},
		{"tx-2", "job-7", at("2020-01-01T00:00:00Z"), true},
		{"tx-2", "job-8", at("2026-01-01T00:00:00Z"), true},
		{"tx-2", "job-8", at("2026-06-30T23:59:59Z"), true},
		{"tx-2", "job-8", at("2026-07-01T00:00:00Z"), false},
		{"tx-2", "job-8", at("2025-12-31T23:59:59Z"), false},
	} {
		if got := o.Scope.Covers(c.tx, c.job, c.created); got != c.want {
			t.Errorf("%+v: %v", c, got)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	a, b := newSigner("judge-a"), newSigner("judge-b")
	base := func() orders.Config {
		return orders.Config{Address: "http://127.0.0.1:8200", TokenFile: "/etc/custody/vault-token", Signers: []orders.Signer{a.pinned(), b.pinned()}, Quorum: 2}
	}
	ok := base()
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	if ok.Mount != "secret" || ok.OrdersPath != "custody/orders" || ok.Timeout != orders.Duration(2*time.Second) {
		t.Fatalf("defaults: %+v", ok)
	}
	for field, edit := range map[string]func(c *orders.Config){
		"address":              func(c *orders.Config) { c.Address = "http://vault.example:8200" },
		"token_file":           func(c *orders.Config) { c.TokenFile = "" },
		"approle":              func(c *orders.Config) { c.AppRole = &orders.AppRole{RoleIDFile: "r", SecretIDFile: "s"} },
		"approle.role_id_file": func(c *orders.Config) { c.TokenFile = ""; c.AppRole = &orders.AppRole{SecretIDFile: "s"} },
		"kv_mount":             func(c *orders.Config) { c.Mount = "a//b" },
		"uses_path":            func(c *orders.Config) { c.UsesPath = "custody/orders" },
		"timeout":              func(c *orders.Config) { c.Timeout = orders.Duration(time.Hour) },
		"signers":              func(c *orders.Config) { c.Signers = nil },
		"signers[1].name":      func(c *orders.Config) { c.Signers[1].Name = "judge-a" },
		"signers[1].public_key": func(c *orders.Config) {
			c.Signers[1].PublicKey = c.Signers[0].PublicKey
		},
		"signers[0].public_key": func(c *orders.Config) { c.Signers[0].PublicKey = "AAAA" },
		"quorum":                func(c *orders.Config) { c.Quorum = 3 },
	} {
		c := base()
		edit(&c)
		err := c.Validate()
		if !errors.Is(err, orders.ErrConfig) || !strings.Contains(err.Error(), "vault."+field+":") {
			t.Errorf("%s: %v", field, err)
		}
	}
	var c orders.Config
	if err := json.Unmarshal([]byte(`{"address":"http://127.0.0.1:1","token_file":"t","timeout":"1500ms","quorum":1,"signers":[{"name":"judge-a","public_key":"`+a.pinned().PublicKey+`"}]}`), &c); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil || c.Timeout != orders.Duration(1500*time.Millisecond) {
		t.Fatalf("from JSON: %v %v", err, c.Timeout)
	}
}

func TestPrivateKeyFile(t *testing.T) {
	_, k, _ := ed25519.GenerateKey(nil)
	pemBytes, err := orders.MarshalPrivateKey(k, "judge-a")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := dir + "/key"
	if err := writeFile(p, pemBytes, 0o400); err != nil {
		t.Fatal(err)
	}
	back, name, err := orders.LoadPrivateKey(p)
	if err != nil || !back.Equal(k) || name != "judge-a" {
		t.Fatalf("load: %v", err)
	}
	p2 := dir + "/key2"
	writeFile(p2, pemBytes, 0o644)
	if _, _, err := orders.LoadPrivateKey(p2); err == nil {
		t.Fatal("a 0644 key file was accepted")
	}
}

func TestNilCheckerFailsClosed(t *testing.T) {
	var c *orders.Checker
	if _, err := c.Authorize(context.Background(), "a", "order-1", "p", "tx-1", "", time.Now()); !errors.Is(err, orders.ErrUnavailable) {
		t.Fatalf("nil checker: %v", err)
	}
}
