package orders_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"

	"custody/internal/orders"
	"custody/internal/orders/vaulttest"
)

// The attacks of this file are made by a Vault writer: a token with the
// legal-intake policy (the intake role itself, or whoever holds its token),
// and, where it says so, root, which can do anything in Vault.

// writeAs writes a record to the order's KV entry with client c, without
// check-and-set (the policy allows an update either way).
func writeAs(t *testing.T, c *vault.Client, path string, v any) error {
	t.Helper()
	raw, _ := json.Marshal(v)
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	_, err := c.Logical().Write(path, map[string]any{"data": m})
	return err
}

func orderPath(id string) string      { return "secret/data/custody/orders/" + id }
func revocationPath(id string) string { return "secret/data/custody/revocations/" + id }

// signedBy is a record of o with valid signatures by e's first n signers:
// what a writer could hold if signers had ever signed that body.
func (e *env) signedBy(o *orders.Order, n int) orders.Record {
	rec := orders.Record{Order: *o, Signatures: []orders.Signature{}}
	for _, s := range e.signers[:n] {
		rec.Signatures = append(rec.Signatures, orders.Sign(o, s.name, s.key))
	}
	return rec
}

func (e *env) signatures(t *testing.T, id string) int {
	t.Helper()
	rec, _, _, err := e.intake.Show(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return len(rec.Signatures)
}

// TestSignRefusesBodyChangedAfterReview: the body is replaced in Vault
// between a signer's review and their signature; the signature is
// refused and nothing is written.
func TestSignRefusesBodyChangedAfterReview(t *testing.T) {
	vs := vaulttest.Shared(t)
	e := newEnv(t, vs)
	ctx := context.Background()
	attacker := vs.Client(t, vs.Token(t, "legal-intake"))
	judge := e.signers[0]

	o := e.order()
	if _, err := e.intake.Create(ctx, o); err != nil {
		t.Fatal(err)
	}
	reviewed := o.BodySHA256() // what `order sign ID` showed the signer
	swapped := *o
	swapped.Auditor, swapped.MaxUses = "auditor-b", 1000
	if err := writeAs(t, attacker, orderPath(o.ID), orders.Record{Order: swapped, Signatures: []orders.Signature{}}); err != nil {
		t.Fatalf("the intake policy allows the write (the daemon, not Vault, refuses the body): %v", err)
	}
	_, err := e.intake.Sign(ctx, o.ID, judge.name, judge.key, reviewed)
	var mismatch *orders.ReviewMismatchError
	if !errors.Is(err, orders.ErrReviewMismatch) || !errors.As(err, &mismatch) || mismatch.InVault.Auditor != "auditor-b" {
		t.Fatalf("sign after the swap: %v", err)
	}
	if n := e.signatures(t, o.ID); n != 0 {
		t.Fatalf("%d signatures written", n)
	}
	// A signer who reviews the swapped body is refused too: it is not the
	// body first written, and the daemon would never accept it.
	if _, err := e.intake.Sign(ctx, o.ID, judge.name, judge.key, swapped.BodySHA256()); !errors.Is(err, orders.ErrBodyChanged) {
		t.Fatalf("sign the swapped body: %v", err)
	}
	if n := e.signatures(t, o.ID); n != 0 {
		t.Fatalf("%d signatures written", n)
	}

	// The writer takes the id first with its own body: the signer, who
	// reviewed the body legal intake sent, is refused.
	legit := e.order()
	squat := *legit
	squat.Scope.Transactions = []string{"tx-1", "tx-2", "tx-3"}
	if err := writeAs(t, attacker, orderPath(legit.ID), orders.Record{Order: squat, Signatures: []orders.Signature{}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.intake.Create(ctx, legit); !errors.Is(err, orders.ErrExists) {
		t.Fatalf("create over the squatted id: %v", err)
	}
	if _, err := e.intake.Sign(ctx, legit.ID, judge.name, judge.key, legit.BodySHA256()); !errors.Is(err, orders.ErrReviewMismatch) {
		t.Fatalf("sign the squatted id: %v", err)
	}
	if n := e.signatures(t, legit.ID); n != 0 {
		t.Fatalf("%d signatures written", n)
	}
	// A reviewed hash must be a whole SHA-256.
	if _, err := e.intake.Sign(ctx, o.ID, judge.name, judge.key, reviewed[:2]); err == nil || e.signatures(t, o.ID) != 0 {
		t.Fatalf("a truncated hash: %v", err)
	}
}

// TestAuthorizeRefusesBodyReplacedAfterSigning: once the quorum signed,
// a writer replaces the body with another one, even one that carries valid
// signatures by pinned signers; the daemon refuses it because it is not the
// body first written under the id.
func TestAuthorizeRefusesBodyReplacedAfterSigning(t *testing.T) {
	vs := vaulttest.Shared(t)
	e := newEnv(t, vs)
	attacker := vs.Client(t, vs.Token(t, "legal-intake"))
	o := e.order()
	e.create(o, 2)
	if _, err := e.authorize(o.ID); err != nil {
		t.Fatal(err)
	}
	wide := *o
	wide.MaxUses, wide.Scope.Transactions = orders.MaxUsesLimit, []string{"tx-1", "tx-2", "tx-9"}
	if err := writeAs(t, attacker, orderPath(o.ID), e.signedBy(&wide, 3)); err != nil {
		t.Fatal(err)
	}
	_, err := e.authorize(o.ID)
	if !errors.Is(err, orders.ErrBodyChanged) || !errors.Is(err, orders.ErrDenied) {
		t.Fatalf("replaced body: %v", err)
	}
	// Putting back the first body with its signatures restores exactly the
	// order that was signed: the first body is the only one that counts.
	if err := writeAs(t, attacker, orderPath(o.ID), e.signedBy(o, 2)); err != nil {
		t.Fatal(err)
	}
	if g, err := e.authorize(o.ID); err != nil || g.Use != 2 {
		t.Fatalf("first body again: %+v %v", g, err)
	}
}

// TestAuthorizeRefusesLostFirstVersion: a writer who can delete or destroy
// KV versions (root here; neither shipped policy can) removes version 1, so
// that nothing shows what the body was: refused.
func TestAuthorizeRefusesLostFirstVersion(t *testing.T) {
	vs := vaulttest.Shared(t)
	e := newEnv(t, vs)
	intake := vs.Client(t, vs.Token(t, "legal-intake"))
	root := vs.Root(t)
	for _, op := range []string{"delete", "destroy"} {
		o := e.order()
		e.create(o, 2)
		path := "secret/" + op + "/custody/orders/" + o.ID
		if _, err := intake.Logical().Write(path, map[string]any{"versions": []int{1}}); err == nil {
			t.Fatalf("the intake policy may %s version 1", op)
		}
		if _, err := root.Logical().Write(path, map[string]any{"versions": []int{1}}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.authorize(o.ID); !errors.Is(err, orders.ErrBodyChanged) {
			t.Fatalf("version 1 %sd: %v", op, err)
		}
	}
}

// TestAmendmentCannotBeBypassed: an amendment is a new order id that
// names the order it supersedes. It counts only once that order is revoked,
// and a Vault writer cannot bring the older, wider order back.
func TestAmendmentCannotBeBypassed(t *testing.T) {
	vs := vaulttest.Shared(t)
	e := newEnv(t, vs)
	ctx := context.Background()
	attacker := vs.Client(t, vs.Token(t, "legal-intake"))
	old := e.order()
	e.create(old, 2)
	if _, err := e.authorize(old.ID); err != nil {
		t.Fatal(err)
	}
	amended := e.order()
	amended.Supersedes, amended.Scope = old.ID, orders.Scope{Transactions: []string{"tx-1"}}
	amended.MaxUses = 1
	e.create(amended, 2)
	if _, err := e.authorize(amended.ID); !errors.Is(err, orders.ErrSupersededLive) || !errors.Is(err, orders.ErrDenied) {
		t.Fatalf("amendment while the old order lives: %v", err)
	}
	if err := e.intake.Revoke(ctx, old.ID, "superseded by "+amended.ID, "test", e.now); err != nil {
		t.Fatal(err)
	}
	if _, err := e.authorize(amended.ID); err != nil {
		t.Fatalf("amendment: %v", err)
	}
	if _, err := e.authorize(old.ID); !errors.Is(err, orders.ErrRevoked) {
		t.Fatalf("superseded order: %v", err)
	}
	// 1. The old, validly signed body written again under its own id.
	if err := writeAs(t, attacker, orderPath(old.ID), e.signedBy(old, 3)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.authorize(old.ID); !errors.Is(err, orders.ErrRevoked) {
		t.Fatalf("old body restored: %v", err)
	}
	// 2. Its revocation overwritten or deleted: Vault refuses.
	if err := writeAs(t, attacker, revocationPath(old.ID), map[string]any{"reason": "undo"}); !isForbidden(err) {
		t.Fatalf("overwrite the revocation: %v", err)
	}
	if _, err := attacker.Logical().Delete(revocationPath(old.ID)); !isForbidden(err) {
		t.Fatalf("delete the revocation: %v", err)
	}
	// 3. The old, wider body under the amendment's id, and 4. a wider body
	// for the amendment carrying valid signatures.
	if err := writeAs(t, attacker, orderPath(amended.ID), e.signedBy(old, 2)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.authorize(amended.ID); !errors.Is(err, orders.ErrMalformed) {
		t.Fatalf("old body under the amendment's id: %v", err)
	}
	wider := *amended
	wider.MaxUses, wider.Scope = 5, old.Scope
	if err := writeAs(t, attacker, orderPath(amended.ID), e.signedBy(&wider, 2)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.authorize(amended.ID); !errors.Is(err, orders.ErrBodyChanged) {
		t.Fatalf("wider amendment body: %v", err)
	}
	if _, err := e.authorize(old.ID); !errors.Is(err, orders.ErrRevoked) {
		t.Fatalf("old order at the end: %v", err)
	}
}

// TestRevokedOrderCannotBeRevived: what each Vault writer can do to a
// revocation. The intake policy and the daemon's policy cannot change or
// remove it at all; a writer who can delete or destroy its versions (root
// here) still cannot revive the order, because the daemon counts a
// revocation whose versions were deleted; only deleting the entry's
// metadata (permanent removal, `delete` on secret/metadata/..., which no
// shipped policy grants) makes the order count again, and the last step
// shows that limit.
func TestRevokedOrderCannotBeRevived(t *testing.T) {
	vs := vaulttest.Shared(t)
	e := newEnv(t, vs)
	ctx := context.Background()
	o := e.order()
	e.create(o, 2)
	if err := e.intake.Revoke(ctx, o.ID, "quashed", "test", e.now); err != nil {
		t.Fatal(err)
	}
	revoked := func(what string) {
		t.Helper()
		if _, err := e.authorize(o.ID); !errors.Is(err, orders.ErrRevoked) {
			t.Fatalf("%s: %v, want ErrRevoked", what, err)
		}
	}
	revoked("revoked")
	meta := "secret/metadata/custody/revocations/" + o.ID
	for name, token := range map[string]string{"legal-intake": vs.Token(t, "legal-intake"), "custodyd": e.token} {
		c := vs.Client(t, token)
		attempts := map[string]error{
			"overwrite":       writeAs(t, c, revocationPath(o.ID), map[string]any{"reason": "undo"}),
			"overwrite cas=1": cas(c, revocationPath(o.ID), 1),
		}
		_, attempts["delete latest"] = c.Logical().Delete(revocationPath(o.ID))
		_, attempts["delete version"] = c.Logical().Write("secret/delete/custody/revocations/"+o.ID, map[string]any{"versions": []int{1}})
		_, attempts["destroy version"] = c.Logical().Write("secret/destroy/custody/revocations/"+o.ID, map[string]any{"versions": []int{1}})
		_, attempts["delete metadata"] = c.Logical().Delete(meta)
		_, attempts["expire versions"] = c.Logical().Write(meta, map[string]any{"delete_version_after": "1s"})
		for what, err := range attempts {
			if !isForbidden(err) {
				t.Errorf("%s token: %s the revocation: %v, want Vault's refusal", name, what, err)
			}
		}
		revoked(name + " token's attempts")
	}
	// A new body under the revoked id, even validly signed: still revoked
	// (and a rewritten body besides).
	again := *o
	again.NotAfter = again.NotAfter.Add(24 * time.Hour)
	if err := writeAs(t, vs.Client(t, vs.Token(t, "legal-intake")), orderPath(o.ID), e.signedBy(&again, 3)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.authorize(o.ID); !errors.Is(err, orders.ErrBodyChanged) {
		t.Fatalf("new body under the revoked id: %v", err)
	}
	if err := writeAs(t, vs.Client(t, vs.Token(t, "legal-intake")), orderPath(o.ID), e.signedBy(o, 2)); err != nil {
		t.Fatal(err)
	}
	revoked("first body written again")

	// Root deletes, then destroys, the revocation's version: still revoked.
	root := vs.Root(t)
	if _, err := root.Logical().Delete(revocationPath(o.ID)); err != nil {
		t.Fatal(err)
	}
	revoked("revocation soft-deleted by root")
	if _, _, rev, err := e.intake.Show(ctx, o.ID); err != nil || rev == nil {
		t.Fatalf("show after the soft delete: %+v %v", rev, err)
	}
	if _, err := root.Logical().Write("secret/destroy/custody/revocations/"+o.ID, map[string]any{"versions": []int{1}}); err != nil {
		t.Fatal(err)
	}
	revoked("revocation destroyed by root")
	// The limit: root removes the entry with its metadata, and nothing in
	// Vault says the order was ever revoked.
	if _, err := root.Logical().Delete(meta); err != nil {
		t.Fatal(err)
	}
	if _, err := e.authorize(o.ID); err != nil {
		t.Fatalf("after root deleted the revocation's metadata the order counts again (the documented limit); got %v", err)
	}
}

func cas(c *vault.Client, path string, version int) error {
	_, err := c.Logical().Write(path, map[string]any{"options": map[string]any{"cas": version}, "data": map[string]any{"reason": "undo"}})
	return err
}

// isForbidden reports whether Vault refused a request with 403.
func isForbidden(err error) bool {
	var re *vault.ResponseError
	return errors.As(err, &re) && re.StatusCode == 403
}
