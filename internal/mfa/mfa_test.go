package mfa_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"custody/hsm"
	"custody/hsm/hsmtest"
	"custody/internal/config/duration"
	"custody/internal/mfa"
	"custody/internal/orders"
	"custody/internal/orders/vaulttest"
)

func TestMain(m *testing.M) {
	stopVault := func() (func(), error) { return vaulttest.Stop, nil }
	hsmtest.Main(m, stopVault)
}

func openToken(t *testing.T) *hsm.Token {
	t.Helper()
	tok, err := hsm.Open(context.Background(), hsmtest.NewToken(t), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tok.Close() })
	return tok
}

// rfcSeed is RFC 6238 appendix B's SHA-1 seed.
var rfcSeed = []byte("12345678901234567890")

// TestRFC6238VectorsOnDevice: the RFC's SHA-1 test vectors (8 digits),
// every HMAC computed by SoftHSM with the seed imported as a sensitive,
// non-extractable CKM_SHA_1_HMAC key whose value the token does not give out.
func TestRFC6238VectorsOnDevice(t *testing.T) {
	tok := openToken(t)
	ctx := context.Background()
	const label = "custody/mfa/rfc6238"
	seed := append([]byte(nil), rfcSeed...)
	if err := tok.ImportHMACKey(ctx, label, seed); err != nil {
		t.Fatal(err)
	}
	clear(seed)
	sens, extr, readable, err := tok.HMACKeyExtractable(ctx, label)
	if err != nil || !sens || extr || readable {
		t.Fatalf("seed key: sensitive %v extractable %v value readable %v (%v)", sens, extr, readable, err)
	}
	if err := tok.ImportHMACKey(ctx, label, rfcSeed); !errors.Is(err, hsm.ErrExists) {
		t.Fatalf("second import: %v, want ErrExists", err)
	}
	for _, v := range []struct {
		unix int64
		code string
	}{
		{59, "94287082"}, {1111111109, "07081804"}, {1111111111, "14050471"},
		{1234567890, "89005924"}, {2000000000, "69279037"}, {20000000000, "65353130"},
	} {
		got, err := mfa.Code(ctx, tok, label, mfa.Step(time.Unix(v.unix, 0)), 8)
		if err != nil || got != v.code {
			t.Errorf("T=%d: %q %v, want %s", v.unix, got, err, v.code)
		}
		got6, _ := mfa.Code(ctx, tok, label, mfa.Step(time.Unix(v.unix, 0)), 6)
		if got6 != v.code[2:] {
			t.Errorf("T=%d, 6 digits: %q, want %s", v.unix, got6, v.code[2:])
		}
	}
	if _, err := tok.HMACSHA1(ctx, "custody/mfa/nobody", []byte("x")); !errors.Is(err, hsm.ErrNotFound) {
		t.Fatalf("no key: %v", err)
	}
	if err := tok.DestroyHMACKey(ctx, label); err != nil {
		t.Fatal(err)
	}
	if _, err := tok.HMACSHA1(ctx, label, []byte("x")); !errors.Is(err, hsm.ErrNotFound) {
		t.Fatalf("after destroy: %v", err)
	}
}

func TestURI(t *testing.T) {
	u := mfa.URI("custody", "auditor-1", rfcSeed)
	want := "otpauth://totp/custody:auditor-1?algorithm=SHA1&digits=6&issuer=custody&period=30&secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
	if u != want {
		t.Fatalf("%s\nwant %s", u, want)
	}
}

// verifier is a Verifier on tok and vs with custodyd's Vault policy.
func verifier(t *testing.T, tok *hsm.Token, vs *vaulttest.Server) *mfa.Verifier {
	t.Helper()
	cfg := orders.Config{Address: vs.Addr, TokenFile: vaulttest.TokenFile(t, vs.Token(t, "custodyd")), Timeout: duration.Duration(500 * time.Millisecond),
		Signers: []orders.Signer{{Name: "judge-a", PublicKey: "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="}}, Quorum: 1}
	c, err := orders.NewChecker(context.Background(), cfg, orders.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &mfa.Verifier{Device: tok, KV: c.KV(), Path: "custody/mfa",
		IsConflict: func(err error) bool { return errors.Is(err, orders.ErrCASConflict) },
		NotFound:   func(err error) bool { return errors.Is(err, hsm.ErrNotFound) }}
}

func enroll(t *testing.T, tok *hsm.Token, principal string) {
	t.Helper()
	if err := tok.ImportHMACKey(context.Background(), mfa.KeyLabel(principal), rfcSeed); err != nil {
		t.Fatal(err)
	}
}

func code(t *testing.T, tok *hsm.Token, principal string, at time.Time) string {
	t.Helper()
	c, err := mfa.Code(context.Background(), tok, mfa.KeyLabel(principal), mfa.Step(at), 6)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestVerify: the current code, ±1 step of skew, not ±2; each step once
// (replay refused, fleet-wide: a second daemon's verifier refuses it too);
// a wrong code; not enrolled.
func TestVerify(t *testing.T) {
	tok := openToken(t)
	vs := vaulttest.Shared(t)
	v, other := verifier(t, tok, vs), verifier(t, tok, vs)
	ctx := context.Background()
	p := "auditor-" + vaulttest.Random(4)
	enroll(t, tok, p)
	now := time.Date(2026, 11, 25, 12, 0, 10, 0, time.UTC)
	if err := v.Verify(ctx, p, code(t, tok, p, now), now); err != nil {
		t.Fatalf("current code: %v", err)
	}
	if err := other.Verify(ctx, p, code(t, tok, p, now), now); !errors.Is(err, mfa.ErrReplay) {
		t.Fatalf("the same code on another daemon: %v, want ErrReplay", err)
	}
	later := now.Add(2 * mfa.Period)
	if err := v.Verify(ctx, p, code(t, tok, p, later.Add(mfa.Period)), later); err != nil {
		t.Fatalf("one step ahead (skew): %v", err)
	}
	later = later.Add(3 * mfa.Period)
	if err := v.Verify(ctx, p, code(t, tok, p, later.Add(-mfa.Period)), later); err != nil {
		t.Fatalf("one step behind (skew): %v", err)
	}
	later = later.Add(3 * mfa.Period)
	if err := v.Verify(ctx, p, code(t, tok, p, later.Add(2*mfa.Period)), later); !errors.Is(err, mfa.ErrInvalid) || errors.Is(err, mfa.ErrReplay) {
		t.Fatalf("two steps ahead: %v, want ErrInvalid", err)
	}
	for _, bad := range []string{"000000x", "12345", "", "１２３４５６"} {
		if err := v.Verify(ctx, p, bad, later); !errors.Is(err, mfa.ErrInvalid) {
			t.Fatalf("%q: %v", bad, err)
		}
	}
	if err := v.Verify(ctx, "nobody-"+vaulttest.Random(3), "123456", later); !errors.Is(err, mfa.ErrNotEnrolled) {
		t.Fatalf("not enrolled: %v", err)
	}
	// Those five wrong codes locked p (TestLockout). Concurrent use of one
	// code by another principal: exactly one is accepted.
	if err := v.Verify(ctx, p, code(t, tok, p, later), later); !errors.Is(err, mfa.ErrLocked) {
		t.Fatalf("after five wrong codes: %v, want ErrLocked", err)
	}
	p = "auditor-" + vaulttest.Random(4)
	enroll(t, tok, p)
	c := code(t, tok, p, later)
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range errs {
		wg.Go(func() { errs[i] = []*mfa.Verifier{v, other}[i%2].Verify(ctx, p, c, later) })
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		if err == nil {
			ok++
		} else if !errors.Is(err, mfa.ErrReplay) {
			t.Fatalf("concurrent: %v", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d concurrent uses of one code accepted, want 1", ok)
	}
}

// TestLockout: MaxFailures wrong codes lock the factor fleet-wide, the
// right code included, until LockFor has passed.
func TestLockout(t *testing.T) {
	tok := openToken(t)
	vs := vaulttest.Shared(t)
	v, other := verifier(t, tok, vs), verifier(t, tok, vs)
	ctx := context.Background()
	p := "auditor-" + vaulttest.Random(4)
	enroll(t, tok, p)
	now := time.Date(2026, 11, 25, 12, 0, 10, 0, time.UTC)
	right := code(t, tok, p, now)
	wrong := "000000"
	if wrong == right {
		wrong = "111111"
	}
	for i := range mfa.MaxFailures {
		if err := v.Verify(ctx, p, wrong, now); !errors.Is(err, mfa.ErrInvalid) {
			t.Fatalf("failure %d: %v", i+1, err)
		}
	}
	if err := other.Verify(ctx, p, right, now); !errors.Is(err, mfa.ErrLocked) {
		t.Fatalf("right code while locked, on another daemon: %v, want ErrLocked", err)
	}
	after := now.Add(mfa.LockFor + time.Second)
	if err := v.Verify(ctx, p, code(t, tok, p, after), after); err != nil {
		t.Fatalf("after the lock: %v", err)
	}
}

// TestVerifyFailsClosed: Vault sealed → ErrUnavailable, the right code
// included.
func TestVerifyFailsClosed(t *testing.T) {
	tok := openToken(t)
	vs := vaulttest.Private(t)
	v := verifier(t, tok, vs)
	p := "auditor-" + vaulttest.Random(4)
	enroll(t, tok, p)
	now := time.Now()
	vs.Seal(t)
	err := v.Verify(context.Background(), p, code(t, tok, p, now), now)
	if !errors.Is(err, mfa.ErrUnavailable) || !strings.Contains(err.Error(), "sealed") {
		t.Fatalf("Vault sealed: %v", err)
	}
}

// TestRelabelOnDevice: a relabelable key moves to another label and keeps
// computing the same MAC; a key imported by ImportHMACKey cannot be moved;
// listing shows labels only.
func TestRelabelOnDevice(t *testing.T) {
	tok := openToken(t)
	ctx := context.Background()
	if err := tok.ImportRelabelableHMACKey(ctx, "custody/mfa-pending/a/x1", rfcSeed); err != nil {
		t.Fatal(err)
	}
	want, _ := mfa.Code(ctx, tok, "custody/mfa-pending/a/x1", 1, 8)
	if err := tok.RelabelHMACKey(ctx, "custody/mfa-pending/a/x1", "custody/mfa/a"); err != nil {
		t.Fatal(err)
	}
	got, err := mfa.Code(ctx, tok, "custody/mfa/a", 1, 8)
	if err != nil || got != want {
		t.Fatalf("after relabel: %q %v, want %s", got, err, want)
	}
	if _, err := tok.HMACSHA1(ctx, "custody/mfa-pending/a/x1", []byte("x")); !errors.Is(err, hsm.ErrNotFound) {
		t.Fatalf("old label: %v", err)
	}
	sens, extr, readable, err := tok.HMACKeyExtractable(ctx, "custody/mfa/a")
	if err != nil || !sens || extr || readable {
		t.Fatalf("relabelled key: sensitive %v extractable %v readable %v (%v)", sens, extr, readable, err)
	}
	if err := tok.ImportHMACKey(ctx, "custody/mfa/b", rfcSeed); err != nil {
		t.Fatal(err)
	}
	if err := tok.RelabelHMACKey(ctx, "custody/mfa/b", "custody/mfa/c"); err == nil {
		t.Fatal("a non-modifiable key was relabelled")
	}
	if err := tok.ImportRelabelableHMACKey(ctx, "custody/mfa-pending/b/x2", rfcSeed); err != nil {
		t.Fatal(err)
	}
	if err := tok.RelabelHMACKey(ctx, "custody/mfa-pending/b/x2", "custody/mfa/b"); !errors.Is(err, hsm.ErrExists) {
		t.Fatalf("relabel onto a used label: %v", err)
	}
	labels, err := tok.HMACKeyLabels(ctx, "custody/mfa")
	if err != nil || strings.Join(labels, " ") != "custody/mfa-pending/b/x2 custody/mfa/a custody/mfa/b" {
		t.Fatalf("labels %q %v", labels, err)
	}
}

// TestServiceEnrollments: on SoftHSM, a self-enrollment is pending (its
// codes are ErrNotEnrolled), cannot be confirmed by its principal
// (ErrSelfConfirm) nor with another id (ErrNoEnrollment), nor replaced
// (ErrEnrolled); confirmed by another, its seed verifies; List shows
// labels only; revoke removes active and pending keys; re-enrolling makes
// a new seed.
func TestServiceEnrollments(t *testing.T) {
	tok := openToken(t)
	v := verifier(t, tok, vaulttest.Shared(t))
	v.Path = "custody/mfa/" + vaulttest.Random(6)
	v.IsExists = func(err error) bool { return errors.Is(err, hsm.ErrExists) }
	s := &mfa.Service{Verifier: *v, Keys: tok, Issuer: "custody"}
	ctx := context.Background()
	now := time.Unix(1_800_000_000, 0)

	uri, id, err := s.StartSelf(ctx, "alice")
	if err != nil || !strings.HasPrefix(uri, "otpauth://totp/custody:alice?") || len(id) != 9 {
		t.Fatalf("StartSelf: %q %q %v", uri, id, err)
	}
	pendingCode, err := mfa.Code(ctx, tok, mfa.PendingPrefix+"alice/"+id, mfa.Step(now), 6)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Verify(ctx, "alice", pendingCode, now); !errors.Is(err, mfa.ErrNotEnrolled) {
		t.Fatalf("pending factor's code: %v, want ErrNotEnrolled", err)
	}
	if _, _, err := s.StartSelf(ctx, "alice"); !errors.Is(err, mfa.ErrEnrolled) {
		t.Fatalf("second StartSelf: %v", err)
	}
	if _, err := s.Enroll(ctx, "alice"); !errors.Is(err, mfa.ErrEnrolled) {
		t.Fatalf("Enroll over a pending one: %v", err)
	}
	if err := s.Confirm(ctx, "alice", "alice", id); !errors.Is(err, mfa.ErrSelfConfirm) {
		t.Fatalf("self-confirm: %v", err)
	}
	for _, bad := range []string{"AAAA-AAAA", "", "../x", strings.ToLower(id)} {
		if bad == id {
			continue
		}
		if err := s.Confirm(ctx, "bob", "alice", bad); !errors.Is(err, mfa.ErrNoEnrollment) {
			t.Fatalf("confirm id %q: %v", bad, err)
		}
	}
	if l, err := s.List(ctx); err != nil || len(l) != 1 || l[0] != (mfa.Enrollment{Principal: "alice", Pending: true, ID: id}) {
		t.Fatalf("List: %+v %v", l, err)
	}
	if err := s.Confirm(ctx, "bob", "alice", id); err != nil {
		t.Fatal(err)
	}
	if err := s.Verify(ctx, "alice", pendingCode, now); err != nil {
		t.Fatalf("the confirmed seed's code: %v", err)
	}
	if err := s.Confirm(ctx, "bob", "alice", id); !errors.Is(err, mfa.ErrNoEnrollment) {
		t.Fatalf("confirm twice: %v", err)
	}
	if _, err := s.Enroll(ctx, "carol"); err != nil {
		t.Fatal(err)
	}
	if l, _ := s.List(ctx); len(l) != 2 || l[0] != (mfa.Enrollment{Principal: "alice"}) || l[1] != (mfa.Enrollment{Principal: "carol"}) {
		t.Fatalf("List: %+v", l)
	}
	// A pending and an active key at once (two daemons racing): revoke removes both.
	if err := tok.ImportRelabelableHMACKey(ctx, mfa.PendingPrefix+"alice/AAAA-BBBB", rfcSeed); err != nil {
		t.Fatal(err)
	}
	if err := s.Revoke(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if err := s.Revoke(ctx, "alice"); !errors.Is(err, mfa.ErrNoEnrollment) {
		t.Fatalf("revoke twice: %v", err)
	}
	if l, _ := s.List(ctx); len(l) != 1 || l[0].Principal != "carol" {
		t.Fatalf("List after revoke: %+v", l)
	}
	uri2, err := s.Enroll(ctx, "alice")
	if err != nil || uri2 == uri {
		t.Fatalf("re-enroll: %v (same URI: %v)", err, uri2 == uri)
	}
}
