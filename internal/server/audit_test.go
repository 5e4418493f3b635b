package server_test

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"custody/hsm"
	"custody/internal/api"
	"custody/internal/auditlog"
	"custody/internal/config/duration"
	"custody/internal/orders"
	"custody/internal/orders/vaulttest"
	"custody/internal/policy"
	"custody/internal/server"
)

// auditPolicy is testPolicy with the auditor role added to root's
// principal "operator", so that one process can seal and audit.
var auditPolicy = strings.Replace(testPolicy, `"users": ["root"], "roles": ["admin", "application"`, `"users": ["root"], "roles": ["admin", "application", "auditor"`, 1)

// countingToken counts the device opens per key label: the deny tests
// assert that the escrow unwrap is never reached.
type countingToken struct {
	server.Token
	mu    sync.Mutex
	opens map[string]int
}

func (c *countingToken) Open(ctx context.Context, req hsm.OpenRequest) ([]byte, error) {
	c.mu.Lock()
	c.opens[req.KeyLabel]++
	c.mu.Unlock()
	return c.Token.Open(ctx, req)
}

// OpenFields is counted like Open (envelope v2 opens go through it).
func (c *countingToken) OpenFields(ctx context.Context, req hsm.OpenFieldsRequest) ([][]byte, error) {
	c.mu.Lock()
	c.opens[req.KeyLabel]++
	c.mu.Unlock()
	return c.Token.OpenFields(ctx, req)
}

func (c *countingToken) count(label string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.opens[label]
}

// auditHarness is a harness whose daemon has a Checker against a real
// Vault, with three pinned signers and a quorum of two.
type auditHarness struct {
	*harness
	vault   *vaulttest.Server
	tok     *countingToken
	signers []ed25519.PrivateKey // judge-a, judge-b, judge-c
	intake  *orders.Intake
	cfg     orders.Config
	dtoken  string // the daemon's Vault token
	escrow  string // the escrow key label
	wall    time.Time
	policy  *policy.Store // the audit server's policy
}

func newAuditHarness(t testing.TB, vs *vaulttest.Server) *auditHarness {
	t.Helper()
	return newAuditHarnessAt(t, vs, vs.Addr, 3*time.Second)
}

// newAuditHarnessAt has the daemon reach Vault at addr with timeout.
func newAuditHarnessAt(t testing.TB, vs *vaulttest.Server, addr string, timeout time.Duration) *auditHarness {
	t.Helper()
	if auditPolicy == testPolicy {
		t.Fatal("auditPolicy: testPolicy changed shape; give root's principal the auditor role again")
	}
	a := &auditHarness{vault: vs, wall: time.Now().UTC().Truncate(time.Second)}
	a.cfg = orders.Config{Address: addr, Timeout: duration.Duration(timeout), Quorum: 2}
	for _, name := range []string{"judge-a", "judge-b", "judge-c"} {
		pub, k, _ := ed25519.GenerateKey(nil)
		a.signers = append(a.signers, k)
		a.cfg.Signers = append(a.cfg.Signers, orders.Signer{Name: name, PublicKey: base64.StdEncoding.EncodeToString(pub)})
	}
	a.dtoken = vs.Token(t, "custodyd")
	a.cfg.TokenFile = vaulttest.TokenFile(t, a.dtoken)
	checker, err := orders.NewChecker(context.Background(), a.cfg, orders.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { checker.Close() })
	a.intake = orders.NewIntake(vs.Client(t, vs.Token(t, "legal-intake")), orders.DefaultPaths)
	policyPath := filepath.Join(t.TempDir(), "audit-policy.json")
	if err := os.WriteFile(policyPath, []byte(auditPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	store, err := policy.NewStore(policyPath)
	if err != nil {
		t.Fatal(err)
	}
	a.policy = store
	a.harness = newHarnessWith(t, func(d *server.Deps) {
		a.tok = &countingToken{Token: d.Token, opens: map[string]int{}}
		d.Token, d.Policy, d.Orders = a.tok, store, checker
	})
	esc, err := a.keys.Escrow()
	if err != nil {
		t.Fatal(err)
	}
	a.escrow = esc.Label
	a.register("client-1", "miner-1")
	return a
}

// order is a valid order for "operator" over tx-1 (and job job-tx-2),
// purpose tax-investigation, valid an hour either side of now.
func (a *auditHarness) order() *orders.Order {
	id := "order-" + vaulttest.Random(6)
	return &orders.Order{
		Version: orders.FormatVersion, ID: id, Auditor: "operator",
		Scope:          orders.Scope{Transactions: []string{"tx-1"}, Jobs: []string{"job-tx-2"}},
		Purpose:        "tax-investigation",
		DocumentSHA256: fmt.Sprintf("%x", sha256.Sum256([]byte("document of "+id))),
		Authority:      "District Court Example, case 12/2026",
		NotBefore:      a.wall.Add(-time.Hour), NotAfter: a.wall.Add(time.Hour), MaxUses: 5,
	}
}

// issue creates o and has the first n pinned signers sign it.
func (a *auditHarness) issue(o *orders.Order, n int) {
	a.t.Helper()
	ctx := context.Background()
	if _, err := a.intake.Create(ctx, o); err != nil {
		a.t.Fatal(err)
	}
	for i, k := range a.signers[:n] {
		if _, err := a.intake.Sign(ctx, o.ID, a.cfg.Signers[i].Name, k, o.BodySHA256()); err != nil {
			a.t.Fatal(err)
		}
	}
}

func (a *auditHarness) audit(env, orderID, purpose string) (int, map[string]any) {
	a.t.Helper()
	return a.call("POST", "/v1/audit/decrypt", map[string]any{"envelope": env, "authorization": orderID, "purpose": purpose})
}

func TestAuditDecrypt(t *testing.T) {
	a := newAuditHarness(t, vaulttest.Shared(t))
	env := a.seal("tx-1", "client-1", "miner-1")
	o := a.order()
	a.issue(o, 2)
	st, body := a.audit(env, o.ID, "tax-investigation")
	if st != 200 {
		t.Fatalf("%d %v", st, body)
	}
	conf := body["confidential"].(map[string]any)
	if conf["amount"] != "1000" || conf["settlement_details"] != "IBAN DE00" || conf["pricing"] == nil {
		t.Fatalf("confidential %v: want every field", conf)
	}
	ord := body["order"].(map[string]any)
	if ord["id"] != o.ID || ord["version"] != float64(3) || ord["use"] != float64(1) || ord["document_sha256"] != o.DocumentSHA256 {
		t.Fatalf("order %v", ord)
	}
	if n := a.tok.count(a.escrow); n != 1 {
		t.Fatalf("%d escrow opens, want 1", n)
	}
	e := a.rec.last()
	if e.Operation != "audit-decrypt" || e.Outcome != auditlog.Allowed || e.CourtOrder != o.ID || e.OrderVersion != 3 ||
		e.DocumentHash != o.DocumentSHA256 || e.UseNumber != 1 || e.KeyLabel != a.escrow || e.TransactionID != "tx-1" || e.Principal != "operator" {
		t.Fatalf("access entry %+v", e)
	}
	// In scope by job id; the batch form consumes one use per item.
	env2 := a.seal("tx-2", "miner-1")
	st, body = a.call("POST", "/v1/audit/decrypt/batch", map[string]any{"items": []map[string]any{
		{"envelope": env2, "authorization": o.ID, "purpose": "tax-investigation"},
		{"envelope": a.seal("tx-3", "miner-1"), "authorization": o.ID, "purpose": "tax-investigation"},
	}})
	if st != 200 {
		t.Fatalf("batch: %d %v", st, body)
	}
	res := body["results"].([]any)
	if res[0].(map[string]any)["result"] == nil || errCode(res[1].(map[string]any)) != api.CodeOrderOutOfScope {
		t.Fatalf("batch results %v", res)
	}
	if n := a.tok.count(a.escrow); n != 2 {
		t.Fatalf("%d escrow opens, want 2", n)
	}
}

func TestAuditDecryptRefusals(t *testing.T) {
	a := newAuditHarness(t, vaulttest.Shared(t))
	ctx := context.Background()
	env := a.seal("tx-1", "client-1")
	_, mallory, _ := ed25519.GenerateKey(nil)
	cases := []struct {
		name    string
		setup   func(o *orders.Order) // issues the order
		purpose string                // "" = tax-investigation
		env     string                // "" = env (tx-1)
		code    string
		outcome auditlog.Outcome
	}{
		{name: "unknown order", setup: func(o *orders.Order) {}, code: api.CodeOrderUnknown},
		{name: "bad signature", setup: func(o *orders.Order) {
			a.issue(o, 1)
			forged := orders.Sign(o, "judge-b", a.signers[0]) // judge-a's key under judge-b's name
			a.putRecord(o, []orders.Signature{orders.Sign(o, "judge-a", a.signers[0]), forged})
		}, code: api.CodeOrderSignature},
		{name: "one signature short of quorum", setup: func(o *orders.Order) { a.issue(o, 1) }, code: api.CodeOrderQuorum},
		{name: "unknown signer", setup: func(o *orders.Order) {
			a.issue(o, 2)
			if _, err := a.intake.Sign(ctx, o.ID, "mallory", mallory, o.BodySHA256()); err != nil {
				t.Fatal(err)
			}
		}, code: api.CodeOrderUnknownSigner},
		{name: "duplicated signer", setup: func(o *orders.Order) {
			s := orders.Sign(o, "judge-a", a.signers[0])
			a.putRecord(o, []orders.Signature{s, s})
		}, code: api.CodeOrderDuplicateSign},
		{name: "revoked", setup: func(o *orders.Order) {
			a.issue(o, 2)
			if err := a.intake.Revoke(ctx, o.ID, "quashed", "test", a.wall); err != nil {
				t.Fatal(err)
			}
		}, code: api.CodeOrderRevoked},
		{name: "not yet valid", setup: func(o *orders.Order) {
			o.NotBefore, o.NotAfter = a.wall.Add(time.Hour), a.wall.Add(2*time.Hour)
			a.issue(o, 2)
		}, code: api.CodeOrderNotYetValid},
		{name: "expired", setup: func(o *orders.Order) {
			o.NotBefore, o.NotAfter = a.wall.Add(-2*time.Hour), a.wall.Add(-time.Minute)
			a.issue(o, 2)
		}, code: api.CodeOrderExpired},
		{name: "other auditor", setup: func(o *orders.Order) { o.Auditor = "auditor-b"; a.issue(o, 2) }, code: api.CodeOrderOtherAuditor},
		{name: "transaction out of scope", setup: func(o *orders.Order) { a.issue(o, 2) }, env: a.seal("tx-9", "client-1"), code: api.CodeOrderOutOfScope},
		{name: "wrong purpose", setup: func(o *orders.Order) { a.issue(o, 2) }, purpose: "curiosity", code: api.CodeOrderPurpose},
		{name: "exhausted", setup: func(o *orders.Order) {
			o.MaxUses = 1
			a.issue(o, 2)
			if st, body := a.audit(env, o.ID, "tax-investigation"); st != 200 {
				t.Fatalf("first use: %d %v", st, body)
			}
		}, code: api.CodeOrderExhausted},
		{name: "malformed order", setup: func(o *orders.Order) {
			o.MaxUses = 0
			a.putRecord(o, nil)
		}, code: api.CodeOrderMalformed},
		{name: "tampered envelope", setup: func(o *orders.Order) { a.issue(o, 2) },
			env: strings.Replace(env, env[len(env)/2:len(env)/2+4], "AAAA", 1), code: ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := a.order()
			c.setup(o)
			purpose, e := c.purpose, c.env
			if purpose == "" {
				purpose = "tax-investigation"
			}
			if e == "" {
				e = env
			}
			before := a.tok.count(a.escrow)
			st, body := a.audit(e, o.ID, purpose)
			if st == 200 || c.code != "" && errCode(body) != c.code {
				t.Fatalf("%d %v, want %s", st, body, c.code)
			}
			if n := a.tok.count(a.escrow); n != before {
				t.Fatalf("the escrow key was used %d times by a refused request", n-before)
			}
			last := a.rec.last()
			if last.Operation != "audit-decrypt" || last.Outcome == auditlog.Allowed || last.Code != errCode(body) || last.CourtOrder != o.ID || last.KeyLabel != "" {
				t.Fatalf("access entry %+v", last)
			}
			if strings.HasPrefix(c.code, "order_") && last.Outcome != auditlog.Denied {
				t.Fatalf("outcome %s, want denied", last.Outcome)
			}
		})
	}

	t.Run("caller not an auditor", func(t *testing.T) {
		o := a.order()
		a.issue(o, 2)
		path := a.policy.Path()
		os.WriteFile(path, []byte(testPolicy), 0o644) // root: admin, application; no auditor
		if err := a.policy.Reload(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			os.WriteFile(path, []byte(auditPolicy), 0o644)
			a.policy.Reload()
		}()
		before := a.tok.count(a.escrow)
		st, body := a.audit(env, o.ID, "tax-investigation")
		if st != 403 || errCode(body) != api.CodePermissionDenied {
			t.Fatalf("%d %v", st, body)
		}
		if a.tok.count(a.escrow) != before {
			t.Fatal("escrow key used")
		}
		// The order's uses are untouched: the door refused before Vault.
		if _, _, _, err := a.intake.Show(context.Background(), o.ID); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("access log refuses", func(t *testing.T) {
		o := a.order()
		a.issue(o, 2)
		a.rec.setFail(true)
		defer a.rec.setFail(false)
		before := a.tok.count(a.escrow)
		st, body := a.audit(env, o.ID, "tax-investigation")
		if st != 503 || errCode(body) != api.CodeLogUnavailable || a.tok.count(a.escrow) != before {
			t.Fatalf("%d %v", st, body)
		}
	})
}

// putRecord writes an order record as root, bypassing the intake tool.
func (a *auditHarness) putRecord(o *orders.Order, sigs []orders.Signature) {
	a.t.Helper()
	if sigs == nil {
		sigs = []orders.Signature{}
	}
	sj := make([]any, len(sigs))
	for i, s := range sigs {
		sj[i] = map[string]any{"signer": s.Signer, "signature": s.Signature}
	}
	ord := map[string]any{"version": o.Version, "id": o.ID, "auditor": o.Auditor, "purpose": o.Purpose,
		"scope": map[string]any{"transactions": o.Scope.Transactions, "jobs": o.Scope.Jobs}, "document_sha256": o.DocumentSHA256,
		"authority": o.Authority, "not_before": o.NotBefore, "not_after": o.NotAfter, "max_uses": o.MaxUses}
	if _, err := a.vault.Root(a.t).Logical().Write("secret/data/custody/orders/"+o.ID, map[string]any{"data": map[string]any{"order": ord, "signatures": sj}}); err != nil {
		a.t.Fatal(err)
	}
}

func TestAuditMaxUsesConcurrent(t *testing.T) {
	a := newAuditHarness(t, vaulttest.Shared(t))
	env := a.seal("tx-1", "client-1")
	o := a.order()
	o.MaxUses = 3
	a.issue(o, 2)
	codes := make([]string, 10)
	var wg sync.WaitGroup
	for i := range codes {
		wg.Go(func() {
			st, body := a.callRaw("POST", "/v1/audit/decrypt", map[string]any{"envelope": env, "authorization": o.ID, "purpose": "tax-investigation"})
			if st == 200 {
				codes[i] = "ok"
			} else {
				codes[i] = string(body)
			}
		})
	}
	wg.Wait()
	ok := 0
	for _, c := range codes {
		switch {
		case c == "ok":
			ok++
		case !strings.Contains(c, `"`+api.CodeOrderExhausted+`"`):
			t.Errorf("unexpected answer %s", c)
		}
	}
	if ok != 3 || a.tok.count(a.escrow) != 3 {
		t.Fatalf("%d succeeded, %d escrow opens; want exactly 3 of each", ok, a.tok.count(a.escrow))
	}
}

// TestAuditVaultFailures: sealed (then unsealed: works again), token
// revoked. They seal the shared server, so they do not run in parallel.
func TestAuditVaultFailures(t *testing.T) {
	vs := vaulttest.Shared(t)
	a := newAuditHarness(t, vs)
	env := a.seal("tx-1", "client-1")
	o := a.order()
	a.issue(o, 2)
	expect := func(what, code string) {
		t.Helper()
		before := a.tok.count(a.escrow)
		st, body := a.audit(env, o.ID, "tax-investigation")
		got := errCode(body)
		if code == "" && st != 200 || code != "" && got != code {
			t.Fatalf("%s: %d %v, want %q", what, st, body, code)
		}
		opened := a.tok.count(a.escrow) - before
		if code != "" && opened != 0 || code == "" && opened != 1 {
			t.Fatalf("%s: %d escrow opens", what, opened)
		}
		if code != "" {
			if e := a.rec.last(); e.Code != code || e.Outcome != auditlog.Failed || e.CourtOrder != o.ID {
				t.Fatalf("%s: access entry %+v", what, e)
			}
		}
	}
	expect("before", "")
	vs.Seal(t)
	sealed := true
	defer func() {
		if sealed {
			vs.Unseal(t)
		}
	}()
	expect("sealed", api.CodeVaultSealed)
	vs.Unseal(t)
	sealed = false
	expect("unsealed again", "")
	vs.Revoke(t, a.dtoken)
	expect("token revoked", api.CodeVaultDenied)
}

func TestAuditVaultStopped(t *testing.T) {
	vs := vaulttest.Private(t)
	a := newAuditHarness(t, vs)
	env := a.seal("tx-1", "client-1")
	o := a.order()
	a.issue(o, 2)
	if st, body := a.audit(env, o.ID, "tax-investigation"); st != 200 {
		t.Fatalf("%d %v", st, body)
	}
	vs.Stop()
	before := a.tok.count(a.escrow)
	st, body := a.audit(env, o.ID, "tax-investigation")
	if st != 503 || errCode(body) != api.CodeVaultUnavailable || a.tok.count(a.escrow) != before {
		t.Fatalf("%d %v", st, body)
	}
}

func TestAuditNotConfigured(t *testing.T) {
	h := newHarnessWith(t, func(d *server.Deps) {
		path := filepath.Join(t.TempDir(), "p.json")
		os.WriteFile(path, []byte(auditPolicy), 0o644)
		store, err := policy.NewStore(path)
		if err != nil {
			t.Fatal(err)
		}
		d.Policy = store
	})
	h.register("client-1")
	env := h.seal("tx-1", "client-1")
	st, body := h.call("POST", "/v1/audit/decrypt", map[string]any{"envelope": env, "authorization": "order-1", "purpose": "x"})
	if st != 503 || errCode(body) != api.CodeVaultUnavailable {
		t.Fatalf("%d %v", st, body)
	}
}

// hangProxy forwards TCP to Vault until hang is called; from then on it
// accepts connections and never answers, like a Vault that stalls.
type hangProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	hung   bool
	conns  []net.Conn
}

func newHangProxy(t testing.TB, target string) *hangProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &hangProxy{ln: ln, target: strings.TrimPrefix(target, "http://")}
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			p.conns = append(p.conns, c)
			hung := p.hung
			p.mu.Unlock()
			if hung {
				continue // held open, never read
			}
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, up)
			p.mu.Unlock()
			go io.Copy(up, c)
			go io.Copy(c, up)
		}
	}()
	return p
}

func (p *hangProxy) addr() string { return "http://" + p.ln.Addr().String() }

// hang closes the forwarded connections; new ones are held unanswered.
func (p *hangProxy) hang() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hung = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func TestAuditVaultSlow(t *testing.T) {
	vs := vaulttest.Shared(t)
	proxy := newHangProxy(t, vs.Addr)
	a := newAuditHarnessAt(t, vs, proxy.addr(), 500*time.Millisecond)
	env := a.seal("tx-1", "client-1")
	o := a.order()
	a.issue(o, 2)
	if st, body := a.audit(env, o.ID, "tax-investigation"); st != 200 {
		t.Fatalf("through the proxy: %d %v", st, body)
	}
	proxy.hang()
	before := a.tok.count(a.escrow)
	start := time.Now()
	st, body := a.audit(env, o.ID, "tax-investigation")
	if st != 504 || errCode(body) != api.CodeVaultTimeout || a.tok.count(a.escrow) != before {
		t.Fatalf("%d %v", st, body)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("answered after %v with a 500ms vault.timeout", d)
	}
}
