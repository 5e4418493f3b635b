package orders_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"custody/internal/config/duration"
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

// fixedAmendment is fixedOrder in format 2, amending order-2026-101.
func fixedAmendment() *orders.Order {
	o := fixedOrder()
	o.Version, o.Supersedes = 2, "order-2026-101"
	return o
}

// TestCanonicalKnownAnswerV2 pins format 2's signed encoding: the prefix
// names version 2 and the signed body carries supersedes right after id.
// The SHA-256 values were computed outside Go (sha256sum of the body line).
func TestCanonicalKnownAnswerV2(t *testing.T) {
	const want = `custody court order v2
{"version":2,"id":"order-2026-117","supersedes":"order-2026-101","auditor":"auditor-a","scope":{"transactions":["tx-1"],"jobs":["job-7"],"created_from":"2026-01-01T00:00:00Z","created_until":"2026-07-01T00:00:00Z"},"purpose":"tax-investigation","document_sha256":"abababababababababababababababababababababababababababababababab","authority":"District Court <Example> & Co","not_before":"2026-11-01T00:00:00Z","not_after":"2026-12-01T00:00:00Z","max_uses":3}`
	o := fixedAmendment()
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := string(o.SignedMessage()); got != want {
		t.Fatalf("signed message\n got %s\nwant %s", got, want)
	}
	if got := o.BodySHA256(); got != kat2SHA256 {
		t.Fatalf("v2 body sha256 %s, want %s", got, kat2SHA256)
	}
	if got := fixedOrder().BodySHA256(); got != kat1SHA256 {
		t.Fatalf("v1 body sha256 %s, want %s", got, kat1SHA256)
	}
	back, err := orders.ParseOrder(o.Canonical())
	if err != nil || string(back.Canonical()) != string(o.Canonical()) {
		t.Fatalf("round trip: %v", err)
	}
	// Without supersedes, a format 2 body differs from format 1 only in the
	// version, and the signatures do not carry over between the formats.
	v1, v2 := fixedOrder(), fixedOrder()
	v2.Version = 2
	s := newSigner("judge-a")
	ver, _ := orders.NewVerifier([]orders.Signer{s.pinned()}, 1)
	sig := orders.Sign(v1, s.name, s.key)
	if _, err := ver.Verify(&orders.Record{Order: *v2, Signatures: []orders.Signature{sig}}); !errors.Is(err, orders.ErrSignature) {
		t.Fatalf("a format 1 signature verified on a format 2 body: %v", err)
	}
	if _, err := ver.Verify(&orders.Record{Order: *v1, Signatures: []orders.Signature{sig}}); err != nil {
		t.Fatalf("format 1 order: %v", err)
	}
}

// The SHA-256 of the canonical bodies of fixedOrder (format 1) and
// fixedAmendment (format 2).
const (
	kat1SHA256 = "30057e1d431bb765042817d13ec993c45272b79125699b26c052612dcf356709"
	kat2SHA256 = "1958310b5a4656e47bb193a2684587f517a568fa6d1421a469f9fd7926eb2b27"
)

func TestParseBody(t *testing.T) {
	o := fixedAmendment()
	indented, _ := json.MarshalIndent(o, "", "  ")
	back, err := orders.ParseBody(indented)
	if err != nil || back.BodySHA256() != o.BodySHA256() {
		t.Fatalf("indented body: %v", err)
	}
	c := string(o.Canonical())
	for name, in := range map[string]string{
		"unknown field": strings.Replace(c, `"max_uses":3}`, `"max_uses":3,"extra":1}`, 1),
		"duplicate key": strings.Replace(c, `"max_uses":3}`, `"max_uses":3,"max_uses":4}`, 1),
		"trailing":      c + " {}",
		"invalid":       strings.Replace(c, `"max_uses":3`, `"max_uses":0`, 1),
		"not json":      "max_uses: 3",
	} {
		if _, err := orders.ParseBody([]byte(in)); !errors.Is(err, orders.ErrMalformed) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestDiffFields(t *testing.T) {
	a, b := fixedAmendment(), fixedAmendment()
	if d := orders.DiffFields(a, b); len(d) != 0 {
		t.Fatalf("same body: %v", d)
	}
	b.MaxUses, b.Auditor = 1000, "mallory"
	b.Scope.Jobs = nil
	if d := strings.Join(orders.DiffFields(a, b), ","); d != "auditor,scope,max_uses" {
		t.Fatalf("diff %s", d)
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
		{"version", func(o *orders.Order) { o.Version = 3 }},
		{"version", func(o *orders.Order) { o.Version = 0 }},
		{"supersedes", func(o *orders.Order) { o.Supersedes = "order-2026-101" }}, // fixedOrder is format 1
		{"supersedes", func(o *orders.Order) { o.Version = 2; o.Supersedes = o.ID }},
		{"supersedes", func(o *orders.Order) { o.Version = 2; o.Supersedes = "../x" }},
		{"id", func(o *orders.Order) { o.ID = "a/b" }},
		{"auditor", func(o *orders.Order) { o.Auditor = "Auditor A" }},
		{"purpose", func(o *orders.Order) { o.Purpose = "" }},
		{"document_sha256", func(o *orders.Order) { o.DocumentSHA256 = strings.Repeat("AB", 32) }},
		{"authority", func(o *orders.Order) { o.Authority = "line\nbreak" }},
		{"authority", func(o *orders.Order) { o.Authority = "Court\u009b2A hidden" }},    // C1 CSI: redraws a terminal
		{"authority", func(o *orders.Order) { o.Authority = "Court \u202eelpmaxE" }},     // bidi override
		{"authority", func(o *orders.Order) { o.Authority = "Court\x1b[1A max_uses 1" }}, // ESC
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
	if ok.Mount != "secret" || ok.OrdersPath != "custody/orders" || ok.Timeout != duration.Duration(2*time.Second) {
		t.Fatalf("defaults: %+v", ok)
	}
	for field, edit := range map[string]func(c *orders.Config){
		"address":              func(c *orders.Config) { c.Address = "http://vault.example:8200" },
		"token_file":           func(c *orders.Config) { c.TokenFile = "" },
		"approle":              func(c *orders.Config) { c.AppRole = &orders.AppRole{RoleIDFile: "r", SecretIDFile: "s"} },
		"approle.role_id_file": func(c *orders.Config) { c.TokenFile = ""; c.AppRole = &orders.AppRole{SecretIDFile: "s"} },
		"kv_mount":             func(c *orders.Config) { c.Mount = "a//b" },
		"uses_path":            func(c *orders.Config) { c.UsesPath = "custody/orders" },
		"timeout":              func(c *orders.Config) { c.Timeout = duration.Duration(time.Hour) },
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
	if err := c.Validate(); err != nil || c.Timeout != duration.Duration(1500*time.Millisecond) {
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
