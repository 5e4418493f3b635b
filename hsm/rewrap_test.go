package hsm_test

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"custody/hsm"
	"custody/hsm/hsmtest"
	"custody/internal/keywrap"
	"custody/internal/pop"
	"custody/internal/priority"
)

func curveOf(alg hsm.KeyAlg) ecdh.Curve {
	if alg == hsm.P256 {
		return ecdh.P256()
	}
	return ecdh.X25519()
}

// testContext stands in for envelope.KDFContext: any function of the
// ephemeral key the software side can recompute.
func testContext(recipient []byte) func([]byte) [32]byte {
	return func(eph []byte) [32]byte { return sha256.Sum256(append(append([]byte("t\x00"), eph...), recipient...)) }
}

func noSessionObjects(t *testing.T, tok *hsm.Token) {
	t.Helper()
	n, err := tok.SessionObjectCount(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("%d session objects left on the token", n)
	}
}

// TestRewrapMatchesSoftware unwraps a DEK sealed in software on the device
// and rewraps it for software-held recipients of both algorithms: the
// device's C_WrapKey output must be byte-for-byte RFC 5649 (wrapPad, an
// independent implementation) of the same DEK under the KEK the recipient
// derives, and the rewrapped DEK must still open the original payload.
func TestRewrapMatchesSoftware(t *testing.T) {
	t.Parallel()
	tok, _ := openToken(t)
	ctx := testCtx(t)
	for _, srcAlg := range []hsm.KeyAlg{hsm.X25519, hsm.P256} {
		key := genKey(t, tok, "rewrap-src-"+srcAlg.String(), srcAlg, hsm.UsageDerive)
		// Seal with a known DEK.
		dek := make([]byte, 32)
		rand.Read(dek)
		ephPub, z := ecdhSoftware(t, srcAlg, key.Public)
		var context [32]byte
		rand.Read(context[:])
		wrapped, err := wrapPad(ecb(t, z, context[:]), dek)
		if err != nil {
			t.Fatal(err)
		}
		var targets []hsm.WrapTarget
		var privs []*ecdh.PrivateKey
		for _, alg := range []hsm.KeyAlg{hsm.X25519, hsm.P256, hsm.X25519} {
			p, _ := curveOf(alg).GenerateKey(rand.Reader)
			privs = append(privs, p)
			targets = append(targets, hsm.WrapTarget{Alg: alg, RecipientPublic: p.PublicKey().Bytes(), Context: testContext(p.PublicKey().Bytes())})
		}
		out, err := tok.Rewrap(ctx, hsm.RewrapRequest{KeyLabel: key.Label, Alg: srcAlg, KDF: hsm.KDFECBContext,
			PeerPublic: ephPub, Context: context, WrappedDEK: wrapped, Targets: targets})
		if err != nil {
			t.Fatalf("%s: Rewrap: %v", srcAlg, err)
		}
		if len(out) != len(targets) {
			t.Fatalf("%d results for %d targets", len(out), len(targets))
		}
		for i, r := range out {
			epub, err := curveOf(targets[i].Alg).NewPublicKey(r.EphemeralPublic)
			if err != nil {
				t.Fatalf("target %d: ephemeral public key: %v", i, err)
			}
			z2, err := privs[i].ECDH(epub)
			if err != nil {
				t.Fatal(err)
			}
			c2 := targets[i].Context(r.EphemeralPublic)
			want, _ := wrapPad(ecb(t, z2, c2[:]), dek)
			if !bytes.Equal(r.WrappedDEK, want) {
				t.Fatalf("%s→%s: device wrap %x != RFC 5649 %x", srcAlg, targets[i].Alg, r.WrappedDEK, want)
			}
		}
		if bytes.Equal(out[0].EphemeralPublic, out[2].EphemeralPublic) {
			t.Fatal("two targets got the same ephemeral key")
		}
	}
	noSessionObjects(t, tok)
}

// softwareTarget is a recipient whose private key the test holds.
type softwareTarget struct {
	priv   *ecdh.PrivateKey
	target hsm.WrapTarget
}

func newSoftwareTarget(t testing.TB, alg hsm.KeyAlg) softwareTarget {
	p, err := curveOf(alg).GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub := p.PublicKey().Bytes()
	return softwareTarget{p, hsm.WrapTarget{Alg: alg, RecipientPublic: pub, Context: testContext(pub)}}
}

// unwrap recovers in software the DEK a rewrap wrapped for st.
func (st softwareTarget) unwrap(t testing.TB, r hsm.Rewrapped) []byte {
	t.Helper()
	epub, err := curveOf(st.target.Alg).NewPublicKey(r.EphemeralPublic)
	if err != nil {
		t.Fatalf("ephemeral public key: %v", err)
	}
	z, err := st.priv.ECDH(epub)
	if err != nil {
		t.Fatal(err)
	}
	c := st.target.Context(r.EphemeralPublic)
	dek, err := keywrap.UnwrapWithKey(ecb(t, z, c[:]), r.WrappedDEK)
	if err != nil {
		t.Fatalf("software unwrap of the rewrapped DEK: %v", err)
	}
	return dek
}

// rewrapOf is the rewrap request for the DEK of an open request, to targets.
func rewrapOf(o hsm.OpenRequest, targets ...hsm.WrapTarget) hsm.RewrapRequest {
	return hsm.RewrapRequest{KeyLabel: o.KeyLabel, Alg: o.Alg, KDF: o.KDF, PeerPublic: o.PeerPublic,
		Context: o.Context, WrappedDEK: bytes.Clone(o.WrappedDEK), Targets: targets}
}

// TestRewrapBatch runs good, tampered and unknown-key requests in one
// batch: each good one gives the DEK it was sealed with to every target
// (checked in software), the bad ones fail on their own without stopping
// the rest, the stanzas for one recipient share the batch's ephemeral key
// while different recipients get different ones, and nothing is left on
// the token.
func TestRewrapBatch(t *testing.T) {
	t.Parallel()
	tok, _ := openToken(t)
	ctx := testCtx(t)
	key := genKey(t, tok, "batch-src", hsm.X25519, hsm.UsageDerive)
	targets := []softwareTarget{newSoftwareTarget(t, hsm.X25519), newSoftwareTarget(t, hsm.P256)}
	var reqs []hsm.RewrapRequest
	var deks [][]byte
	for i := range 5 {
		sealed := seal(t, key, []byte("x"), nil)
		req := rewrapOf(sealed.req, targets[0].target, targets[1].target)
		switch i {
		case 1:
			req.WrappedDEK[20] ^= 1
		case 3:
			req.KeyLabel = "not-on-the-token"
		}
		reqs = append(reqs, req)
		deks = append(deks, sealed.dek)
	}
	res := tok.RewrapBatch(ctx, reqs)
	if len(res) != len(reqs) {
		t.Fatalf("%d results for %d requests", len(res), len(reqs))
	}
	if !errors.Is(res[1].Err, hsm.ErrIntegrity) || !errors.Is(res[3].Err, hsm.ErrNotFound) {
		t.Fatalf("tampered: %v; unknown key: %v", res[1].Err, res[3].Err)
	}
	for _, i := range []int{0, 2, 4} {
		if res[i].Err != nil || len(res[i].Wrapped) != 2 {
			t.Fatalf("request %d: %+v", i, res[i])
		}
		for k, st := range targets {
			if got := st.unwrap(t, res[i].Wrapped[k]); !bytes.Equal(got, deks[i]) {
				t.Fatalf("request %d target %d: rewrapped DEK differs from the sealed one", i, k)
			}
			if !bytes.Equal(res[i].Wrapped[k].EphemeralPublic, res[0].Wrapped[k].EphemeralPublic) {
				t.Fatalf("request %d target %d: a new ephemeral key within one batch", i, k)
			}
		}
	}
	if bytes.Equal(res[0].Wrapped[0].EphemeralPublic, res[0].Wrapped[1].EphemeralPublic) {
		t.Fatal("two recipients share an ephemeral key")
	}
	// A second batch gets a new ephemeral key for the same recipient.
	again := tok.RewrapBatch(ctx, reqs[:1])
	if again[0].Err != nil || bytes.Equal(again[0].Wrapped[0].EphemeralPublic, res[0].Wrapped[0].EphemeralPublic) {
		t.Fatalf("second batch: %+v (ephemeral key reused across batches?)", again[0])
	}
	noSessionObjects(t, tok)

	// Past MaxRewrapBatch every request is refused; nothing reaches the token.
	many := make([]hsm.RewrapRequest, hsm.MaxRewrapBatch+1)
	for i := range many {
		many[i] = reqs[0]
	}
	for i, r := range tok.RewrapBatch(ctx, many) {
		if !errors.Is(r.Err, hsm.ErrInvalidRequest) {
			t.Fatalf("request %d of an oversized batch: %v", i, r.Err)
		}
	}
}

// TestRewrapBatchSessionLoss drops every session of the token halfway
// through a batch (from the target's context function, so that no call is
// inside SoftHSM at that moment): the pool rebuilds once, the rest of the
// batch runs on a new session with new wrap keys, and every result is
// right. Not parallel: closing all sessions while another test's call is in
// the module crashes SoftHSM 2.6.1.
func TestRewrapBatchSessionLoss(t *testing.T) {
	tok, cfg := openToken(t)
	ctx := testCtx(t)
	key := genKey(t, tok, "batch-loss", hsm.X25519, hsm.UsageDerive)
	sealed := seal(t, key, []byte("x"), nil)
	dek := sealed.dek
	var reqs []hsm.RewrapRequest
	var sts []softwareTarget
	dropped := false
	for i := range 6 {
		st := newSoftwareTarget(t, hsm.P256)
		if i == 3 {
			context := st.target.Context
			st.target.Context = func(eph []byte) [32]byte {
				if !dropped {
					dropped = true
					closeAllSessions(t, cfg)
				}
				return context(eph)
			}
		}
		sts = append(sts, st)
		reqs = append(reqs, rewrapOf(sealed.req, st.target))
	}
	before := tok.Info().Rebuilds
	for i, r := range tok.RewrapBatch(ctx, reqs) {
		if r.Err != nil {
			t.Fatalf("request %d: %v", i, r.Err)
		}
		if !bytes.Equal(sts[i].unwrap(t, r.Wrapped[0]), dek) {
			t.Fatalf("request %d: wrong DEK", i)
		}
	}
	if !dropped {
		t.Fatal("the sessions were never dropped")
	}
	if got := tok.Info().Rebuilds - before; got != 1 {
		t.Fatalf("Rebuilds went up by %d, want 1", got)
	}
	noSessionObjects(t, tok)
}

// TestRewrapBatchYields runs a background batch of 400 rewraps on a token
// with one session while foreground opens come one every few milliseconds:
// the batch gives the session to the waiting opens (Info().Yields), which
// all finish while the batch still runs, and every rewrap is still right.
func TestRewrapBatchYields(t *testing.T) {
	t.Parallel()
	cfg := hsmtest.NewToken(t)
	cfg.Sessions = 1
	tok, err := hsm.Open(testCtx(t), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer tok.Close()
	ctx := testCtx(t)
	key := genKey(t, tok, "yield", hsm.X25519, hsm.UsageDerive)
	sealed := seal(t, key, []byte("live"), nil)
	st := newSoftwareTarget(t, hsm.P256)
	reqs := make([]hsm.RewrapRequest, 400)
	for i := range reqs {
		reqs[i] = rewrapOf(sealed.req, st.target)
	}
	done := make(chan []hsm.RewrapResult, 1)
	go func() { done <- tok.RewrapBatch(priority.Background(ctx), reqs) }()
	for range 10 {
		time.Sleep(3 * time.Millisecond) // let time pass: pacing, not a measurement
		if got, err := tok.Open(ctx, sealed.req); err != nil || string(got) != "live" {
			t.Fatalf("open during the batch: %q, %v", got, err)
		}
	}
	select {
	case <-done:
		t.Fatal("the batch finished before the 10 opens: it did not give way (or the machine is far slower than expected)")
	default:
	}
	res := <-done
	for i, r := range res {
		if r.Err != nil || !bytes.Equal(st.unwrap(t, r.Wrapped[0]), sealed.dek) {
			t.Fatalf("request %d: %v", i, r.Err)
		}
	}
	if y := tok.Info().Yields; y == 0 {
		t.Fatal("no yield")
	}
	noSessionObjects(t, tok)
}

// TestRewrapBatchManyRecipients gives one batch more distinct recipients
// than it keeps wrap keys for: the oldest are destroyed and every result is
// still right, and nothing is left on the token.
func TestRewrapBatchManyRecipients(t *testing.T) {
	t.Parallel()
	tok, _ := openToken(t)
	ctx := testCtx(t)
	key := genKey(t, tok, "batch-many", hsm.X25519, hsm.UsageDerive)
	sealed := seal(t, key, []byte("x"), nil)
	dek := sealed.dek
	n := hsm.MaxBatchRecipients + 10
	var sts []softwareTarget
	var reqs []hsm.RewrapRequest
	for range n {
		st := newSoftwareTarget(t, hsm.X25519)
		sts = append(sts, st)
		reqs = append(reqs, rewrapOf(sealed.req, st.target, sts[0].target))
	}
	for i, r := range tok.RewrapBatch(ctx, reqs) {
		if r.Err != nil {
			t.Fatalf("request %d: %v", i, r.Err)
		}
		if !bytes.Equal(sts[i].unwrap(t, r.Wrapped[0]), dek) || !bytes.Equal(sts[0].unwrap(t, r.Wrapped[1]), dek) {
			t.Fatalf("request %d: wrong DEK", i)
		}
	}
	noSessionObjects(t, tok)
}

func TestRewrapRefusals(t *testing.T) {
	t.Parallel()
	tok, _ := openToken(t)
	ctx := testCtx(t)
	key := genKey(t, tok, "rewrap-refuse", hsm.X25519, hsm.UsageDerive)
	s := seal(t, key, []byte("x"), nil).req
	p, _ := ecdh.X25519().GenerateKey(rand.Reader)
	target := hsm.WrapTarget{Alg: hsm.X25519, RecipientPublic: p.PublicKey().Bytes(), Context: testContext(p.PublicKey().Bytes())}
	base := hsm.RewrapRequest{KeyLabel: key.Label, Alg: key.Alg, KDF: hsm.KDFECBContext, PeerPublic: s.PeerPublic,
		Context: s.Context, WrappedDEK: s.WrappedDEK, Targets: []hsm.WrapTarget{target}}
	tampered := base
	tampered.WrappedDEK = bytes.Clone(base.WrappedDEK)
	tampered.WrappedDEK[9] ^= 1
	wrongCtx := base
	wrongCtx.Context[0] ^= 1
	noTargets := base
	noTargets.Targets = nil
	unknown := base
	unknown.KeyLabel = "nope"
	badPoint := base
	badPoint.Targets = []hsm.WrapTarget{{Alg: hsm.P256, RecipientPublic: append([]byte{4}, make([]byte, 64)...), Context: target.Context}}
	for name, tc := range map[string]struct {
		req  hsm.RewrapRequest
		want error
	}{
		"tampered wrap":   {tampered, hsm.ErrIntegrity},
		"wrong context":   {wrongCtx, hsm.ErrIntegrity},
		"no targets":      {noTargets, hsm.ErrInvalidRequest},
		"unknown label":   {unknown, hsm.ErrNotFound},
		"off-curve point": {badPoint, hsm.ErrIntegrity},
	} {
		if _, err := tok.Rewrap(ctx, tc.req); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
	noSessionObjects(t, tok)
}

// TestRewrapDEKCannotDecrypt checks the KEK's CKA_UNWRAP_TEMPLATE on the
// rewrap path: an unwrap through it that asks for a decrypting DEK is refused.
func TestRewrapDEKTemplateEnforced(t *testing.T) {
	t.Parallel()
	tok, cfg := openToken(t)
	key := genKey(t, tok, "rewrap-tmpl", hsm.X25519, hsm.UsageDerive)
	s := seal(t, key, []byte("x"), nil)
	r := newRaw(t, cfg)
	priv := r.find(t, pkcs11.CKO_PRIVATE_KEY, key.Label)
	z, err := r.c.DeriveKey(r.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDH1_DERIVE,
		pkcs11.NewECDH1DeriveParams(pkcs11.CKD_NULL, nil, s.req.PeerPublic))}, priv, hsm.SessionAESForTest(true, false))
	if err != nil {
		t.Fatal(err)
	}
	defer r.c.DestroyObject(r.h, z)
	kek, err := hsm.DeriveRewrapKEKForTest(r.c, r.h, z, s.req.Context)
	if err != nil {
		t.Fatal(err)
	}
	defer r.c.DestroyObject(r.h, kek)
	tmpl := hsm.RewrapDEKTemplateForTest()
	for i, a := range tmpl {
		if a.Type == pkcs11.CKA_DECRYPT {
			tmpl[i] = pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true)
		}
	}
	if o, err := r.c.UnwrapKey(r.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}, kek, s.req.WrappedDEK, tmpl); err == nil {
		r.c.DestroyObject(r.h, o)
		t.Fatal("the rewrap KEK unwrapped a DEK that can decrypt")
	}
	o, err := r.c.UnwrapKey(r.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}, kek, s.req.WrappedDEK, hsm.RewrapDEKTemplateForTest())
	if err != nil {
		t.Fatalf("unwrap with the rewrap template: %v", err)
	}
	defer r.c.DestroyObject(r.h, o)
	if v := r.attr(t, o, pkcs11.CKA_SENSITIVE); !bytes.Equal(v, []byte{1}) {
		t.Fatal("rewrap DEK is not sensitive")
	}
	gcm := pkcs11.NewGCMParams(s.req.Nonce, nil, 128)
	defer gcm.Free()
	if err := r.c.DecryptInit(r.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, gcm)}, o); err == nil {
		t.Fatal("rewrap DEK can decrypt")
	}
}

func TestProvePossession(t *testing.T) {
	t.Parallel()
	tok, _ := openToken(t)
	ctx := testCtx(t)
	for _, alg := range []hsm.KeyAlg{hsm.X25519, hsm.P256} {
		key := genKey(t, tok, "pop-"+alg.String(), alg, hsm.UsageDerive)
		eph, _ := curveOf(alg).GenerateKey(rand.Reader)
		nonce := make([]byte, 32)
		rand.Read(nonce)
		e := eph.PublicKey().Bytes()
		mac, err := tok.ProvePossession(ctx, hsm.PossessionRequest{KeyLabel: key.Label, Alg: alg, VerifierPublic: e,
			Context: pop.Context(alg, e, key.Public, nonce), Message: pop.Message(nonce)})
		if err != nil {
			t.Fatalf("%s: %v", alg, err)
		}
		if err := pop.Verify(alg, eph, key.Public, nonce, mac); err != nil {
			t.Fatalf("%s: verify: %v", alg, err)
		}
		// A public key the token does not hold does not verify.
		stranger, _ := curveOf(alg).GenerateKey(rand.Reader)
		if err := pop.Verify(alg, eph, stranger.PublicKey().Bytes(), nonce, mac); !errors.Is(err, pop.ErrMismatch) {
			t.Fatalf("%s: stranger key: %v, want ErrMismatch", alg, err)
		}
		nonce[0] ^= 1
		if err := pop.Verify(alg, eph, key.Public, nonce, mac); !errors.Is(err, pop.ErrMismatch) {
			t.Fatalf("%s: other nonce: %v, want ErrMismatch", alg, err)
		}
	}
	noSessionObjects(t, tok)
}

func TestDestroyKeyPairAndDataObjects(t *testing.T) {
	t.Parallel()
	tok, _ := openToken(t)
	ctx := testCtx(t)
	key := genKey(t, tok, "doomed", hsm.X25519, hsm.UsageDerive)
	keep := genKey(t, tok, "doomed-not", hsm.X25519, hsm.UsageDerive)
	s := seal(t, key, []byte("x"), nil).req
	if _, err := tok.Open(ctx, s); err != nil { // caches the handle
		t.Fatal(err)
	}
	if err := tok.DestroyKeyPair(ctx, key.Label); err != nil {
		t.Fatal(err)
	}
	if _, err := tok.Open(ctx, s); !errors.Is(err, hsm.ErrNotFound) {
		t.Fatalf("open after destroy: %v, want ErrNotFound", err)
	}
	if _, err := tok.FindKey(ctx, keep.Label); err != nil {
		t.Fatalf("the other key went too: %v", err)
	}
	if err := tok.DestroyKeyPair(ctx, key.Label); !errors.Is(err, hsm.ErrNotFound) {
		t.Fatalf("second destroy: %v, want ErrNotFound", err)
	}
	if err := tok.PutDataObject(ctx, hsm.DataObject{Label: "custody/x/1", Value: []byte(`{"a":1}`)}); err != nil {
		t.Fatal(err)
	}
	if err := tok.PutDataObject(ctx, hsm.DataObject{Label: "custody/x/1", Value: []byte(`{}`)}); !errors.Is(err, hsm.ErrExists) {
		t.Fatalf("second put: %v, want ErrExists", err)
	}
	ds, err := tok.ListDataObjects(ctx, "custody/x/")
	if err != nil || len(ds) != 1 || string(ds[0].Value) != `{"a":1}` {
		t.Fatalf("ListDataObjects = %v, %v", ds, err)
	}
	noSessionObjects(t, tok)
}

// BenchmarkRewrapVsOpen runs the open chain, the rewrap chain of a single
// request (one X25519 target: a key generation and an ECDH of its own) and
// the rewrap chain in batches of 32 (one wrap key per batch) on the same
// token: the device cost of a rewrap relative to a decrypt, without the
// daemon around it. ns/op is per envelope in every case.
func BenchmarkRewrapVsOpen(b *testing.B) {
	tok, _ := openToken(b)
	ctx := testCtx(b)
	key := genKey(b, tok, "bench-rewrap", hsm.X25519, hsm.UsageDerive)
	s := seal(b, key, make([]byte, 256), []byte("aad")).req
	st := newSoftwareTarget(b, hsm.X25519)
	req := rewrapOf(s, st.target)
	b.Run("open", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := tok.Open(ctx, s); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
	b.Run("rewrap", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := tok.Rewrap(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
	const batch = 32
	reqs := make([]hsm.RewrapRequest, batch)
	for i := range reqs {
		reqs[i] = req
	}
	b.Run("rewrap-batch32", func(b *testing.B) {
		b.SetParallelism(1)
		b.RunParallel(func(pb *testing.PB) {
			for {
				n := 0
				for n < batch && pb.Next() {
					n++
				}
				if n == 0 {
					return
				}
				for _, r := range tok.RewrapBatch(ctx, reqs[:n]) {
					if r.Err != nil {
						b.Fatal(r.Err)
					}
				}
			}
		})
	})
}
