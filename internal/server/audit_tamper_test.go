package server_test

import (
	"context"
	"encoding/json"
	"testing"

	vault "github.com/hashicorp/vault/api"

	"custody/internal/api"
	"custody/internal/auditlog"
	"custody/internal/orders"
	"custody/internal/orders/vaulttest"
)

// The attacks of this file are made by a Vault writer holding a token with
// the legal-intake policy; the auditor asks the real daemon over its socket.

// writeOrder writes rec to order id's KV entry with c (no check-and-set).
func writeOrder(t *testing.T, c *vault.Client, id string, rec orders.Record) {
	t.Helper()
	raw, _ := json.Marshal(rec)
	var m map[string]any
	json.Unmarshal(raw, &m)
	if _, err := c.Logical().Write("secret/data/custody/orders/"+id, map[string]any{"data": m}); err != nil {
		t.Fatalf("write order %s: %v", id, err)
	}
}

// signed is o with valid signatures by the harness's first n signers.
func (a *auditHarness) signed(o *orders.Order, n int) orders.Record {
	rec := orders.Record{Order: *o, Signatures: []orders.Signature{}}
	for i, k := range a.signers[:n] {
		rec.Signatures = append(rec.Signatures, orders.Sign(o, a.cfg.Signers[i].Name, k))
	}
	return rec
}

// expectDenied asks for an audit decrypt and wants code, no escrow use and
// a denied access-log entry naming the order.
func (a *auditHarness) expectDenied(t *testing.T, env, orderID, code string) {
	t.Helper()
	before := a.tok.count(a.escrow)
	st, body := a.audit(env, orderID, "tax-investigation")
	if st != 403 || errCode(body) != code {
		t.Fatalf("order %s: %d %v, want 403 %s", orderID, st, body, code)
	}
	if n := a.tok.count(a.escrow) - before; n != 0 {
		t.Fatalf("the escrow key was used %d times by a refused request", n)
	}
	if e := a.rec.last(); e.Outcome != auditlog.Denied || e.Code != code || e.CourtOrder != orderID || e.KeyLabel != "" {
		t.Fatalf("access entry %+v", e)
	}
}

// TestAuditOrderBodyReplaced: after the quorum signed, a Vault writer
// replaces the order's body with a wider one that even carries valid
// signatures by pinned signers: the daemon refuses it as order_body_changed.
func TestAuditOrderBodyReplaced(t *testing.T) {
	vs := vaulttest.Shared(t)
	a := newAuditHarness(t, vs)
	attacker := vs.Client(t, vs.Token(t, "legal-intake"))
	env, other := a.seal("tx-1", "client-1"), a.seal("tx-9", "client-1")
	o := a.order()
	a.issue(o, 2)
	if st, body := a.audit(env, o.ID, "tax-investigation"); st != 200 {
		t.Fatalf("%d %v", st, body)
	}
	a.expectDenied(t, other, o.ID, api.CodeOrderOutOfScope)
	wide := *o
	wide.Scope.Transactions, wide.MaxUses = []string{"tx-1", "tx-9"}, orders.MaxUsesLimit
	writeOrder(t, attacker, o.ID, a.signed(&wide, 3))
	a.expectDenied(t, other, o.ID, api.CodeOrderBodyChanged)
	a.expectDenied(t, env, o.ID, api.CodeOrderBodyChanged)
}

// TestAuditAmendment: an amendment (a new order id superseding the old one)
// narrows an order. It is refused until the old order is revoked; after
// that a Vault writer cannot bring back the older, wider body, neither
// under its own id nor under the amendment's.
func TestAuditAmendment(t *testing.T) {
	vs := vaulttest.Shared(t)
	a := newAuditHarness(t, vs)
	ctx := context.Background()
	attacker := vs.Client(t, vs.Token(t, "legal-intake"))
	env, env2 := a.seal("tx-1", "client-1"), a.seal("tx-2", "client-1")
	old := a.order() // tx-1 and job-tx-2
	a.issue(old, 2)
	if st, body := a.audit(env2, old.ID, "tax-investigation"); st != 200 {
		t.Fatalf("%d %v", st, body)
	}
	amended := a.order()
	amended.Supersedes, amended.Scope = old.ID, orders.Scope{Transactions: []string{"tx-1"}}
	a.issue(amended, 2)
	a.expectDenied(t, env, amended.ID, api.CodeOrderSupersedes)
	if err := a.intake.Revoke(ctx, old.ID, "superseded by "+amended.ID, "test", a.wall); err != nil {
		t.Fatal(err)
	}
	if st, body := a.audit(env, amended.ID, "tax-investigation"); st != 200 {
		t.Fatalf("amendment: %d %v", st, body)
	}
	a.expectDenied(t, env2, amended.ID, api.CodeOrderOutOfScope)
	a.expectDenied(t, env2, old.ID, api.CodeOrderRevoked)

	// The old body, validly signed, written again under the old id.
	writeOrder(t, attacker, old.ID, a.signed(old, 3))
	a.expectDenied(t, env2, old.ID, api.CodeOrderRevoked)
	// The old order's revocation removed: Vault refuses the intake policy.
	if _, err := attacker.Logical().Delete("secret/data/custody/revocations/" + old.ID); err == nil {
		t.Fatal("the intake policy deleted a revocation")
	}
	a.expectDenied(t, env2, old.ID, api.CodeOrderRevoked)
	// The old body under the amendment's id; a wider amendment body.
	writeOrder(t, attacker, amended.ID, a.signed(old, 2))
	a.expectDenied(t, env2, amended.ID, api.CodeOrderMalformed)
	wider := *amended
	wider.Scope = old.Scope
	writeOrder(t, attacker, amended.ID, a.signed(&wider, 2))
	a.expectDenied(t, env2, amended.ID, api.CodeOrderBodyChanged)
}

// TestAuditRevokedNotRevived: the intake policy cannot overwrite or delete
// a revocation, and a revocation whose current version was deleted (by a
// writer beyond the shipped policies: root here) still revokes.
func TestAuditRevokedNotRevived(t *testing.T) {
	vs := vaulttest.Shared(t)
	a := newAuditHarness(t, vs)
	attacker := vs.Client(t, vs.Token(t, "legal-intake"))
	env := a.seal("tx-1", "client-1")
	o := a.order()
	a.issue(o, 2)
	if err := a.intake.Revoke(context.Background(), o.ID, "quashed", "test", a.wall); err != nil {
		t.Fatal(err)
	}
	path := "secret/data/custody/revocations/" + o.ID
	if _, err := attacker.Logical().Write(path, map[string]any{"data": map[string]any{"reason": "undo"}}); err == nil {
		t.Fatal("the intake policy overwrote a revocation")
	}
	if _, err := attacker.Logical().Delete(path); err == nil {
		t.Fatal("the intake policy deleted a revocation")
	}
	a.expectDenied(t, env, o.ID, api.CodeOrderRevoked)
	root := vs.Root(t)
	if _, err := root.Logical().Delete(path); err != nil {
		t.Fatal(err)
	}
	a.expectDenied(t, env, o.ID, api.CodeOrderRevoked)
	if _, err := root.Logical().Write("secret/destroy/custody/revocations/"+o.ID, map[string]any{"versions": []int{1}}); err != nil {
		t.Fatal(err)
	}
	a.expectDenied(t, env, o.ID, api.CodeOrderRevoked)
}
