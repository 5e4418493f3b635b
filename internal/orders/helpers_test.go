package orders_test

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"os"
	"testing"
	"time"

	"custody/internal/config/duration"
	"custody/internal/orders"
	"custody/internal/orders/vaulttest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	vaulttest.Stop()
	os.Exit(code)
}

// signer is a test signer key.
type signer struct {
	name string
	key  ed25519.PrivateKey
}

func newSigner(name string) signer {
	_, k, err := ed25519.GenerateKey(nil)
	if err != nil {
		panic(err)
	}
	return signer{name, k}
}

func (s signer) pinned() orders.Signer {
	return orders.Signer{Name: s.name, PublicKey: base64.StdEncoding.EncodeToString(s.key.Public().(ed25519.PublicKey))}
}

// env is one Vault with an intake client and a checker (2 of 3 signers).
type env struct {
	t       testing.TB
	vault   *vaulttest.Server
	signers []signer // judge-a, judge-b, judge-c: pinned
	intake  *orders.Intake
	root    *orders.Intake // root token: writes what intake may not
	cfg     orders.Config
	checker *orders.Checker
	token   string // the checker's token
	now     time.Time
}

func newEnv(t testing.TB, vs *vaulttest.Server) *env {
	t.Helper()
	e := &env{t: t, vault: vs, now: time.Now().UTC().Truncate(time.Second)}
	e.signers = []signer{newSigner("judge-a"), newSigner("judge-b"), newSigner("judge-c")}
	e.intake = orders.NewIntake(vs.Client(t, vs.Token(t, "legal-intake")), orders.DefaultPaths)
	e.root = orders.NewIntake(vs.Root(t), orders.DefaultPaths)
	e.token = vs.Token(t, "custodyd")
	e.cfg = orders.Config{Address: vs.Addr, TokenFile: vaulttest.TokenFile(t, e.token), Timeout: duration.Duration(3 * time.Second), Quorum: 2}
	for _, s := range e.signers {
		e.cfg.Signers = append(e.cfg.Signers, s.pinned())
	}
	var err error
	e.checker, err = orders.NewChecker(context.Background(), e.cfg, orders.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.checker.Close() })
	return e
}

// order returns a valid order for auditor-a over transaction tx-1 and job
// job-7, purpose tax-investigation, valid for an hour either side of now.
func (e *env) order() *orders.Order {
	id := "order-" + vaulttest.Random(6)
	return &orders.Order{
		Version: orders.FormatVersion, ID: id, Auditor: "auditor-a",
		Scope:          orders.Scope{Transactions: []string{"tx-1", "tx-2"}, Jobs: []string{"job-7"}},
		Purpose:        "tax-investigation",
		DocumentSHA256: fmt.Sprintf("%x", sha256.Sum256([]byte("order document "+id))),
		Authority:      "District Court Example, case 12/2026",
		NotBefore:      e.now.Add(-time.Hour), NotAfter: e.now.Add(time.Hour), MaxUses: 5,
	}
}

// create writes o through the intake role and signs it by the first n
// pinned signers.
func (e *env) create(o *orders.Order, n int) {
	e.t.Helper()
	ctx := context.Background()
	if _, err := e.intake.Create(ctx, o); err != nil {
		e.t.Fatalf("create %s: %v", o.ID, err)
	}
	for _, s := range e.signers[:n] {
		if _, err := e.intake.Sign(ctx, o.ID, s.name, s.key, o.BodySHA256()); err != nil {
			e.t.Fatalf("sign %s by %s: %v", o.ID, s.name, err)
		}
	}
}

func (e *env) authorize(id string) (orders.Grant, error) {
	return e.checker.Authorize(context.Background(), "auditor-a", id, "tax-investigation", "tx-1", "job-1", e.now)
}
