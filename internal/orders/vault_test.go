package orders_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"

	"custody/internal/config/duration"
	"custody/internal/orders"
	"custody/internal/orders/vaulttest"
)

// putRecord writes a record as root, bypassing the intake tool's checks, to
// forge what a compromised or careless writer could store.
func (e *env) putRecord(id string, rec any) {
	e.t.Helper()
	raw, _ := json.Marshal(rec)
	var m map[string]any
	json.Unmarshal(raw, &m)
	if _, err := e.vault.Root(e.t).Logical().Write("secret/data/custody/orders/"+id, map[string]any{"data": m}); err != nil {
		e.t.Fatal(err)
	}
}

func TestAuthorizeValidOrder(t *testing.T) {
	e := newEnv(t, vaulttest.Shared(t))
	o := e.order()
	e.create(o, 2)
	for want := 1; want <= 2; want++ {
		g, err := e.authorize(o.ID)
		if err != nil {
			t.Fatal(err)
		}
		if g.OrderID != o.ID || g.Version != 3 || g.DocumentSHA256 != o.DocumentSHA256 || g.Use != want || g.MaxUses != 5 ||
			len(g.Signers) != 2 || g.Signers[0] != "judge-a" {
			t.Fatalf("grant %+v", g)
		}
	}
	// Scope by job id and by created-at range.
	if _, err := e.checker.Authorize(context.Background(), "auditor-a", o.ID, "tax-investigation", "tx-99", "job-7", e.now); err != nil {
		t.Fatalf("by job: %v", err)
	}
	o2 := e.order()
	from, until := e.now.Add(-48*time.Hour), e.now.Add(-24*time.Hour)
	o2.Scope = orders.Scope{CreatedFrom: &from, CreatedUntil: &until}
	e.create(o2, 3)
	if _, err := e.checker.Authorize(context.Background(), "auditor-a", o2.ID, "tax-investigation", "tx-99", "job-99", from.Add(time.Minute)); err != nil {
		t.Fatalf("by time range: %v", err)
	}
	if _, err := e.checker.Authorize(context.Background(), "auditor-a", o2.ID, "tax-investigation", "tx-99", "job-99", until); !errors.Is(err, orders.ErrOutOfScope) {
		t.Fatalf("at created_until (exclusive): %v", err)
	}
}

func TestAuthorizeRefusals(t *testing.T) {
	e := newEnv(t, vaulttest.Shared(t))
	ctx := context.Background()
	mallory := newSigner("mallory")
	cases := []struct {
		name  string
		setup func(o *orders.Order) // writes the order
		call  func(id string) error // nil = e.authorize
		want  error
	}{
		{"unknown order", func(o *orders.Order) {}, nil, orders.ErrUnknown},
		{"bad signature", func(o *orders.Order) {
			rec := orders.Record{Order: *o, Signatures: []orders.Signature{orders.Sign(o, "judge-a", e.signers[0].key), orders.Sign(o, "judge-b", e.signers[0].key)}}
			e.putRecord(o.ID, rec)
		}, nil, orders.ErrSignature},
		{"body edited after signing", func(o *orders.Order) {
			e.create(o, 2)
			signed := orders.Record{Order: *o, Signatures: []orders.Signature{orders.Sign(o, "judge-a", e.signers[0].key), orders.Sign(o, "judge-b", e.signers[1].key)}}
			signed.Order.MaxUses = 1000
			e.putRecord(o.ID, signed)
		}, nil, orders.ErrSignature},
		{"one signature short of quorum", func(o *orders.Order) { e.create(o, 1) }, nil, orders.ErrQuorum},
		{"no signature", func(o *orders.Order) { e.create(o, 0) }, nil, orders.ErrQuorum},
		{"unknown signer", func(o *orders.Order) {
			e.create(o, 2)
			if _, err := e.intake.Sign(ctx, o.ID, mallory.name, mallory.key, o.BodySHA256()); err != nil {
				t.Fatal(err)
			}
		}, nil, orders.ErrUnknownSigner},
		{"duplicated signer", func(o *orders.Order) {
			sig := orders.Sign(o, "judge-a", e.signers[0].key)
			e.putRecord(o.ID, orders.Record{Order: *o, Signatures: []orders.Signature{sig, sig}})
		}, nil, orders.ErrDuplicateSigner},
		{"revoked", func(o *orders.Order) {
			e.create(o, 2)
			if err := e.intake.Revoke(ctx, o.ID, "quashed on appeal", "test", e.now); err != nil {
				t.Fatal(err)
			}
		}, nil, orders.ErrRevoked},
		{"not yet valid", func(o *orders.Order) {
			o.NotBefore, o.NotAfter = e.now.Add(time.Hour), e.now.Add(2*time.Hour)
			e.create(o, 2)
		}, nil, orders.ErrNotYetValid},
		{"expired", func(o *orders.Order) {
			o.NotBefore, o.NotAfter = e.now.Add(-2*time.Hour), e.now.Add(-time.Second)
			e.create(o, 2)
		}, nil, orders.ErrExpired},
		{"other auditor", func(o *orders.Order) { o.Auditor = "auditor-b"; e.create(o, 2) }, nil, orders.ErrOtherAuditor},
		{"transaction out of scope", func(o *orders.Order) { e.create(o, 2) }, func(id string) error {
			_, err := e.checker.Authorize(ctx, "auditor-a", id, "tax-investigation", "tx-3", "job-1", e.now)
			return err
		}, orders.ErrOutOfScope},
		{"wrong purpose", func(o *orders.Order) { e.create(o, 2) }, func(id string) error {
			_, err := e.checker.Authorize(ctx, "auditor-a", id, "curiosity", "tx-1", "job-1", e.now)
			return err
		}, orders.ErrPurpose},
		{"exhausted", func(o *orders.Order) {
			o.MaxUses = 1
			e.create(o, 2)
			if _, err := e.authorize(o.ID); err != nil {
				t.Fatal(err)
			}
		}, nil, orders.ErrExhausted},
		{"malformed record", func(o *orders.Order) {
			e.putRecord(o.ID, map[string]any{"order": map[string]any{"id": o.ID}, "signatures": []any{}})
		}, nil, orders.ErrMalformed},
		{"record under another id", func(o *orders.Order) {
			other := *o
			other.ID = "order-elsewhere"
			e.putRecord(o.ID, orders.Record{Order: other, Signatures: []orders.Signature{orders.Sign(&other, "judge-a", e.signers[0].key), orders.Sign(&other, "judge-b", e.signers[1].key)}})
		}, nil, orders.ErrMalformed},
		{"invalid order id", func(o *orders.Order) { o.ID = "../uses/x" }, nil, orders.ErrUnknown},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := e.order()
			c.setup(o)
			call := c.call
			if call == nil {
				call = func(id string) error { _, err := e.authorize(id); return err }
			}
			err := call(o.ID)
			if !errors.Is(err, c.want) || !errors.Is(err, orders.ErrDenied) || errors.Is(err, orders.ErrVault) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
}

func TestMaxUsesUnderConcurrency(t *testing.T) {
	e := newEnv(t, vaulttest.Shared(t))
	o := e.order()
	o.MaxUses = 3
	e.create(o, 2)
	var wg sync.WaitGroup
	errs := make([]error, 10)
	uses := make([]int, 10)
	for i := range errs {
		wg.Go(func() {
			g, err := e.authorize(o.ID)
			errs[i], uses[i] = err, g.Use
		})
	}
	wg.Wait()
	ok, seen := 0, map[int]bool{}
	for i, err := range errs {
		switch {
		case err == nil:
			ok++
			seen[uses[i]] = true
		case !errors.Is(err, orders.ErrExhausted):
			t.Errorf("call %d: %v, want success or ErrExhausted", i, err)
		}
	}
	if ok != 3 || !seen[1] || !seen[2] || !seen[3] {
		t.Fatalf("%d succeeded with uses %v, want exactly 3 with uses 1, 2, 3", ok, seen)
	}
}

// TestVaultPolicies shows Vault itself refusing what the shipped policies
// do not allow.
func TestVaultPolicies(t *testing.T) {
	vs := vaulttest.Shared(t)
	e := newEnv(t, vs)
	ctx := context.Background()
	o := e.order()
	e.create(o, 2)
	daemon := orders.NewIntake(vs.Client(t, e.token), orders.DefaultPaths)
	intake := e.intake

	// The daemon cannot create, sign or revoke orders, nor list them.
	o2 := e.order()
	if _, err := daemon.Create(ctx, o2); !errors.Is(err, orders.ErrVaultDenied) {
		t.Errorf("daemon create: %v", err)
	}
	if _, err := daemon.Sign(ctx, o.ID, "judge-c", e.signers[2].key, o.BodySHA256()); !errors.Is(err, orders.ErrVaultDenied) {
		t.Errorf("daemon sign: %v", err)
	}
	if err := daemon.Revoke(ctx, o.ID, "no", "daemon", e.now); !errors.Is(err, orders.ErrVaultDenied) {
		t.Errorf("daemon revoke: %v", err)
	}
	if _, err := daemon.List(ctx); !errors.Is(err, orders.ErrVaultDenied) {
		t.Errorf("daemon list: %v", err)
	}
	// The intake role cannot touch use counters, nor overwrite or delete a revocation.
	ic := vs.Client(t, vs.Token(t, "legal-intake"))
	if _, err := ic.Logical().Read("secret/data/custody/uses/" + o.ID); err == nil {
		t.Error("intake read a use counter")
	}
	if _, err := ic.Logical().Write("secret/data/custody/uses/"+o.ID, map[string]any{"data": map[string]any{"uses": 0}}); err == nil {
		t.Error("intake wrote a use counter")
	}
	if err := intake.Revoke(ctx, o.ID, "first", "test", e.now); err != nil {
		t.Fatal(err)
	}
	if err := intake.Revoke(ctx, o.ID, "second", "test", e.now); !errors.Is(err, orders.ErrVaultDenied) {
		t.Errorf("second revoke: %v, want Vault's refusal", err)
	}
	if _, err := ic.Logical().Write("secret/data/custody/revocations/"+o.ID, map[string]any{"data": map[string]any{"reason": "undo"}}); err == nil {
		t.Error("intake overwrote a revocation")
	}
	if _, err := ic.Logical().Delete("secret/data/custody/revocations/" + o.ID); err == nil {
		t.Error("intake deleted a revocation")
	}
	if _, err := ic.Logical().Delete("secret/metadata/custody/orders/" + o.ID); err == nil {
		t.Error("intake destroyed an order")
	}
	// The intake role may list and show.
	ids, err := intake.List(ctx)
	if err != nil || len(ids) == 0 {
		t.Errorf("intake list: %v %v", ids, err)
	}
	if _, _, rev, err := intake.Show(ctx, o.ID); err != nil || rev == nil || rev.Reason != "first" {
		t.Errorf("intake show: %v %+v", err, rev)
	}
	// Creating an id twice is refused by check-and-set.
	if _, err := intake.Create(ctx, o); !errors.Is(err, orders.ErrExists) {
		t.Errorf("create twice: %v", err)
	}
	// Signing twice by the same signer is refused by the tool.
	if _, err := intake.Sign(ctx, o.ID, "judge-a", e.signers[0].key, o.BodySHA256()); !errors.Is(err, orders.ErrExists) {
		t.Errorf("sign twice: %v", err)
	}
}

// TestSealedThenUnsealed seals the shared server: not parallel.
func TestSealedThenUnsealed(t *testing.T) {
	vs := vaulttest.Shared(t)
	e := newEnv(t, vs)
	o := e.order()
	e.create(o, 2)
	vs.Seal(t)
	sealed := true
	defer func() {
		if sealed {
			vs.Unseal(t)
		}
	}()
	if _, err := e.authorize(o.ID); !errors.Is(err, orders.ErrSealed) || !errors.Is(err, orders.ErrVault) {
		t.Fatalf("sealed: %v", err)
	}
	vs.Unseal(t)
	sealed = false
	if _, err := e.authorize(o.ID); err != nil {
		t.Fatalf("after unseal: %v", err)
	}
}

func TestTokenRevoked(t *testing.T) {
	vs := vaulttest.Shared(t)
	e := newEnv(t, vs)
	o := e.order()
	e.create(o, 2)
	if _, err := e.authorize(o.ID); err != nil {
		t.Fatal(err)
	}
	vs.Revoke(t, e.token)
	if _, err := e.authorize(o.ID); !errors.Is(err, orders.ErrVaultDenied) {
		t.Fatalf("revoked token: %v", err)
	}
}

func TestVaultStopped(t *testing.T) {
	vs := vaulttest.Private(t)
	e := newEnv(t, vs)
	o := e.order()
	e.create(o, 2)
	if _, err := e.authorize(o.ID); err != nil {
		t.Fatal(err)
	}
	vs.Stop()
	if _, err := e.authorize(o.ID); !errors.Is(err, orders.ErrUnavailable) {
		t.Fatalf("stopped: %v", err)
	}
}

// TestVaultSlow points the checker at a listener that accepts and never
// answers: Authorize must give up after the configured timeout.
func TestVaultSlow(t *testing.T) {
	vs := vaulttest.Shared(t)
	e := newEnv(t, vs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	}()
	// A checker authenticated against the real Vault, then moved to the
	// silent address (the client keeps its token).
	cfg := e.cfg
	cfg.Timeout = duration.Duration(300 * time.Millisecond)
	c, err := orders.NewChecker(context.Background(), cfg, orders.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := orders.SetAddress(c, "http://"+ln.Addr().String()); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = c.Authorize(context.Background(), "auditor-a", "order-x", "tax-investigation", "tx-1", "job-1", e.now)
	if !errors.Is(err, orders.ErrTimeout) {
		t.Fatalf("slow vault: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("took %v with a 300ms timeout", d)
	}
}

func TestAppRoleAndRenewal(t *testing.T) {
	vs := vaulttest.Shared(t)
	e := newEnv(t, vs)
	root := vs.Root(t)
	if err := root.Sys().EnableAuthWithOptions("approle", &vault.EnableAuthOptions{Type: "approle"}); err != nil && !strings.Contains(err.Error(), "already in use") {
		t.Fatal(err)
	}
	if _, err := root.Logical().Write("auth/approle/role/custodyd", map[string]any{
		"token_policies": "custodyd", "token_ttl": "2s", "token_max_ttl": "1h", "secret_id_num_uses": 0}); err != nil {
		t.Fatal(err)
	}
	rid, err := root.Logical().Read("auth/approle/role/custodyd/role-id")
	if err != nil {
		t.Fatal(err)
	}
	sid, err := root.Logical().Write("auth/approle/role/custodyd/secret-id", nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name, v string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfg := e.cfg
	cfg.TokenFile = ""
	cfg.AppRole = &orders.AppRole{RoleIDFile: write("role-id", rid.Data["role_id"].(string)), SecretIDFile: write("secret-id", sid.Data["secret_id"].(string))}
	c, err := orders.NewChecker(context.Background(), cfg, orders.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	o := e.order()
	e.create(o, 2)
	time.Sleep(3500 * time.Millisecond) // let time pass: past the 2s TTL: only renewal keeps the token alive
	if _, err := c.Authorize(context.Background(), "auditor-a", o.ID, "tax-investigation", "tx-1", "job-1", e.now); err != nil {
		t.Fatalf("after the first TTL: %v", err)
	}
	cancel()
	<-done
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Authorize(context.Background(), "auditor-a", o.ID, "tax-investigation", "tx-1", "job-1", e.now); !errors.Is(err, orders.ErrVaultDenied) {
		t.Fatalf("after Close: %v", err)
	}
	// A credential file readable by others is refused.
	os.Chmod(cfg.AppRole.SecretIDFile, 0o644)
	if _, err := orders.NewChecker(context.Background(), cfg, orders.Options{}); !errors.Is(err, orders.ErrCredentialFile) {
		t.Fatalf("0644 secret id file: %v", err)
	}
}

func TestNewCheckerFailsClosed(t *testing.T) {
	vs := vaulttest.Shared(t)
	e := newEnv(t, vs)
	cfg := e.cfg
	cfg.TokenFile = vaulttest.TokenFile(t, "hvs.not-a-token")
	if _, err := orders.NewChecker(context.Background(), cfg, orders.Options{}); !errors.Is(err, orders.ErrVaultDenied) {
		t.Fatalf("bad token: %v", err)
	}
}

// BenchmarkAuthorize measures one Authorize against the dev server on
// loopback: four concurrent reads (order, its version 1, revocation, counter) and one
// check-and-set write. Compare BenchmarkKVRead and BenchmarkKVWrite.
func BenchmarkAuthorize(b *testing.B) {
	vs := vaulttest.Shared(b)
	e := newEnv(b, vs)
	o := e.order()
	o.MaxUses = orders.MaxUsesLimit
	e.create(o, 2)
	for b.Loop() {
		if _, err := e.authorize(o.ID); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkKVRead and BenchmarkKVWrite are the raw Vault costs under
// Authorize.
func BenchmarkKVRead(b *testing.B) {
	c := vaulttest.Shared(b).Root(b)
	c.Logical().Write("secret/data/bench/read", map[string]any{"data": map[string]any{"uses": 1}})
	for b.Loop() {
		if _, err := c.Logical().Read("secret/data/bench/read"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkKVWrite(b *testing.B) {
	c := vaulttest.Shared(b).Root(b)
	for b.Loop() {
		if _, err := c.Logical().Write("secret/data/bench/write", map[string]any{"data": map[string]any{"uses": 1}}); err != nil {
			b.Fatal(err)
		}
	}
}

// TestStartCheckerWaitsForVault: a daemon that starts before its Vault
// token exists (the first run, whose dev Vault is still building) refuses
// audit decrypts with ErrUnavailable and the status file's note, and checks
// orders as soon as the token is there, without a restart.
func TestStartCheckerWaitsForVault(t *testing.T) {
	vs := vaulttest.Shared(t)
	e := newEnv(t, vs)
	o := e.order()
	e.create(o, 2)
	dir := t.TempDir()
	cfg := e.cfg
	cfg.TokenFile = filepath.Join(dir, "custodyd.token")
	cfg.StatusFile = filepath.Join(dir, "status")
	if err := os.WriteFile(cfg.StatusFile, []byte("the dev Vault is still building, about 9 min left\nmore\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := orders.NewChecker(context.Background(), cfg, orders.Options{}); !errors.Is(err, orders.ErrCredentialFile) {
		t.Fatalf("NewChecker without a token file: %v", err)
	}
	c, err := orders.StartChecker(context.Background(), cfg, orders.Options{})
	if err != nil || c.Ready() == nil {
		t.Fatalf("StartChecker: %v, ready %v", err, c.Ready())
	}
	_, err = c.Authorize(context.Background(), "auditor-a", o.ID, "tax-investigation", "tx-1", "job-1", e.now)
	if !errors.Is(err, orders.ErrUnavailable) || orders.StatusNote(err) != "the dev Vault is still building, about 9 min left" {
		t.Fatalf("before the token: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Run(ctx)
	if err := os.WriteFile(cfg.TokenFile, []byte(e.token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for c.Ready() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("still not authenticated 20 s after the token file appeared: %v", c.Ready())
		}
		time.Sleep(100 * time.Millisecond) // polling until Ready
	}
	if g, err := c.Authorize(context.Background(), "auditor-a", o.ID, "tax-investigation", "tx-1", "job-1", e.now); err != nil || g.Use != 1 {
		t.Fatalf("after the token appeared: %+v, %v", g, err)
	}
}
