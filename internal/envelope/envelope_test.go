package envelope_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"encoding/base64"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"custody/hsm"
	"custody/internal/envelope"
)

func TestSealParseVerifyOpen(t *testing.T) {
	f := newFixture(t, "tx-1")
	b := f.env.Marshal()
	e, err := envelope.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(e.Marshal(), b) {
		t.Fatal("Marshal(Parse(b)) != b")
	}
	if err := e.Verify(f.signer.lookup); err != nil {
		t.Fatal(err)
	}
	h := e.Header
	if got, want := string(h.PublicFields), `{"currency":"EUR","legs":[1,2]}`; got != want {
		t.Errorf("PublicFields = %s, want %s", got, want)
	}
	if want := time.Date(2025, 3, 1, 12, 0, 0, 123000000, time.UTC); !h.CreatedAt.Equal(want) || h.CreatedAt.Location() != time.UTC {
		t.Errorf("CreatedAt = %v, want %v (UTC, ms)", h.CreatedAt, want)
	}
	if !slices.Equal(h.Participants, []string{"alice", "bank-b", "carol.eu"}) {
		t.Errorf("Participants = %v", h.Participants)
	}
	if e.EscrowStanza() != 3 || h.Stanzas[3].KeyVersion != 4 || h.SigningKeyID != "custodyd:sig:1" {
		t.Errorf("escrow stanza %d, version %d, key id %q", e.EscrowStanza(), h.Stanzas[3].KeyVersion, h.SigningKeyID)
	}
	for i, p := range f.parties {
		idx := e.EscrowStanza()
		if p.ID != "" {
			if idx, err = e.ParticipantStanza(p.ID); err != nil || idx != i {
				t.Fatalf("ParticipantStanza(%q) = %d, %v", p.ID, idx, err)
			}
		}
		pt, err := openSoftware(e, idx, p.priv)
		if err != nil {
			t.Fatalf("stanza %d: %v", idx, err)
		}
		if !bytes.Equal(pt, f.plaintext) {
			t.Fatalf("stanza %d: plaintext %q", idx, pt)
		}
		// Another recipient's key does not open this stanza.
		other := f.parties[(i+2)%len(f.parties)]
		if other.Alg == p.Alg {
			if _, err := openSoftware(e, idx, other.priv); err == nil {
				t.Fatalf("stanza %d opened with %q's key", idx, other.ID)
			}
		}
	}
	if _, err := e.ParticipantStanza("mallory"); !errors.Is(err, envelope.ErrNoStanza) {
		t.Errorf("ParticipantStanza(mallory) = %v, want ErrNoStanza", err)
	}
	if _, err := e.ParticipantStanza(""); !errors.Is(err, envelope.ErrNoStanza) {
		t.Errorf(`ParticipantStanza("") = %v, want ErrNoStanza`, err)
	}

	// Text form.
	txt := e.Text()
	if !strings.HasPrefix(txt, envelope.TextPrefix) {
		t.Errorf("text form %q... lacks prefix %q", txt[:20], envelope.TextPrefix)
	}
	e2, err := envelope.ParseText(txt)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(e2.Marshal(), b) {
		t.Fatal("ParseText(Text()) differs")
	}
	// The parsed envelope does not alias the input.
	b[len(b)-1] ^= 1
	if bytes.Equal(e.Marshal(), b) {
		t.Fatal("Parse result aliases its input")
	}
}

func TestTwoSealsDiffer(t *testing.T) {
	f := newFixture(t, "tx-1")
	e2, err := envelope.Seal(context.Background(), f.in, f.signer)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(f.env.Nonce, e2.Nonce) || bytes.Equal(f.env.Header.Stanzas[0].WrappedDEK, e2.Header.Stanzas[0].WrappedDEK) ||
		bytes.Equal(f.env.Header.Stanzas[0].EphemeralPublic, e2.Header.Stanzas[0].EphemeralPublic) {
		t.Fatal("two seals share a nonce, DEK or ephemeral key")
	}
}

// TestEveryBitFlip flips each bit of a sealed envelope in turn. Each result
// must be refused by Parse, by Verify, or (for the nonce and ciphertext, which
// the signature does not cover) by every stanza's open.
func TestEveryBitFlip(t *testing.T) {
	f := newFixture(t, "tx-flip")
	b := f.env.Marshal()
	payloadStart := len(b) - 4 - len(f.env.Ciphertext) - envelope.NonceSize
	sigStart := payloadStart - envelope.SignatureSize
	for i := range b {
		for bit := 0; bit < 8; bit++ {
			c := bytes.Clone(b)
			c[i] ^= 1 << bit
			e, err := envelope.Parse(c)
			if err != nil {
				if !errors.Is(err, envelope.ErrMalformed) && !errors.Is(err, envelope.ErrVersion) && !errors.Is(err, envelope.ErrTooLarge) {
					t.Fatalf("byte %d bit %d: Parse error without a sentinel: %v", i, bit, err)
				}
				continue
			}
			err = e.Verify(f.signer.lookup)
			switch {
			case i < payloadStart && !errors.Is(err, envelope.ErrSignature):
				t.Fatalf("byte %d bit %d (header/signature, sig at %d): Verify = %v, want ErrSignature", i, bit, sigStart, err)
			case i >= payloadStart && err != nil:
				t.Fatalf("byte %d bit %d (payload): Verify = %v, want nil", i, bit, err)
			}
			if i >= payloadStart && f.opensAny(e) {
				t.Fatalf("byte %d bit %d: tampered payload opened", i, bit)
			}
		}
	}
}

// reseal marshals e after mutate and parses it back.
func mutate(t *testing.T, f *fixture, m func(e *envelope.Envelope)) (*envelope.Envelope, error) {
	t.Helper()
	e, err := envelope.Parse(f.env.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	m(e)
	return envelope.Parse(e.Marshal())
}

func TestTamper(t *testing.T) {
	f := newFixture(t, "tx-A")
	g := newFixture(t, "tx-B")
	mallory := newParty(t, "mallory", hsm.X25519)
	attackerEscrow := newParty(t, "", hsm.P256)
	attackerSeal, err := envelope.Seal(context.Background(), envelope.SealInput{
		TransactionID: "tx-A", JobID: "job-1", Plaintext: []byte("x"),
		Participants: []envelope.Recipient{mallory.Recipient}, Escrow: attackerEscrow.Recipient,
	}, newSigner(t, "custodyd:sig:1"))
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name      string
		m         func(e *envelope.Envelope)
		parseErr  error // nil: parses
		verifyErr error
	}{
		{"drop escrow stanza", func(e *envelope.Envelope) {
			e.Header.Stanzas = e.Header.Stanzas[:len(e.Header.Stanzas)-1]
		}, envelope.ErrMalformed, nil},
		{"escrow stanza as participant", func(e *envelope.Envelope) {
			e.Header.Stanzas[len(e.Header.Stanzas)-1].Kind = envelope.StanzaParticipant
		}, envelope.ErrMalformed, nil},
		{"replace escrow stanza with attacker's", func(e *envelope.Envelope) {
			e.Header.Stanzas[len(e.Header.Stanzas)-1] = attackerSeal.Header.Stanzas[1]
		}, nil, envelope.ErrSignature},
		{"add recipient", func(e *envelope.Envelope) {
			h := &e.Header
			h.Participants = append(h.Participants, "mallory")
			h.Stanzas = slices.Insert(h.Stanzas, len(h.Stanzas)-1, attackerSeal.Header.Stanzas[0])
		}, nil, envelope.ErrSignature},
		{"remove recipient", func(e *envelope.Envelope) {
			e.Header.Participants = e.Header.Participants[1:]
			e.Header.Stanzas = e.Header.Stanzas[1:]
		}, nil, envelope.ErrSignature},
		{"reorder recipients", func(e *envelope.Envelope) {
			h := &e.Header
			h.Participants[0], h.Participants[2] = h.Participants[2], h.Participants[0]
			h.Stanzas[0], h.Stanzas[2] = h.Stanzas[2], h.Stanzas[0]
		}, nil, envelope.ErrSignature},
		{"change public fields", func(e *envelope.Envelope) {
			e.Header.PublicFields = []byte(`{"currency":"USD","legs":[1,2]}`)
		}, nil, envelope.ErrSignature},
		{"change created-at", func(e *envelope.Envelope) { e.Header.CreatedAt = e.Header.CreatedAt.Add(time.Millisecond) }, nil, envelope.ErrSignature},
		{"change job id", func(e *envelope.Envelope) { e.Header.JobID = "job-2" }, nil, envelope.ErrSignature},
		{"change key version", func(e *envelope.Envelope) { e.Header.Stanzas[0].KeyVersion++ }, nil, envelope.ErrSignature},
		{"change signing key id", func(e *envelope.Envelope) { e.Header.SigningKeyID = "other" }, nil, envelope.ErrSignature},
		{"swap stanza from another transaction", func(e *envelope.Envelope) {
			e.Header.Stanzas[0] = g.env.Header.Stanzas[0]
		}, nil, envelope.ErrSignature},
		{"signature from another transaction", func(e *envelope.Envelope) { e.Signature = g.env.Signature }, nil, envelope.ErrSignature},
		{"zero signature", func(e *envelope.Envelope) { e.Signature = make([]byte, 64) }, nil, envelope.ErrSignature},
		{"non-canonical public fields", func(e *envelope.Envelope) {
			e.Header.PublicFields = []byte(`{"legs":[1,2],"currency":"EUR"}`)
		}, envelope.ErrMalformed, nil},
		{"duplicate participant", func(e *envelope.Envelope) {
			e.Header.Participants[1] = "alice"
			e.Header.Stanzas[1].ParticipantID = "alice"
		}, envelope.ErrMalformed, nil},
		{"stanza id mismatch", func(e *envelope.Envelope) { e.Header.Stanzas[1].ParticipantID = "carol.eu" }, envelope.ErrMalformed, nil},
		{"escrow with participant id", func(e *envelope.Envelope) { e.Header.Stanzas[3].ParticipantID = "x" }, envelope.ErrMalformed, nil},
		{"X25519 escrow", func(e *envelope.Envelope) {
			e.Header.Stanzas[3] = e.Header.Stanzas[0]
			e.Header.Stanzas[3].Kind = envelope.StanzaEscrow
			e.Header.Stanzas[3].ParticipantID = ""
		}, envelope.ErrMalformed, nil},
		{"P-256 key size for X25519 stanza", func(e *envelope.Envelope) { e.Header.Stanzas[0].Alg = hsm.P256 }, envelope.ErrMalformed, nil},
		{"P-256 point off curve", func(e *envelope.Envelope) { e.Header.Stanzas[1].EphemeralPublic[64] ^= 1 }, envelope.ErrMalformed, nil},
		{"unknown alg", func(e *envelope.Envelope) { e.Header.Stanzas[0].Alg = 9 }, envelope.ErrMalformed, nil},
		{"unknown KDF", func(e *envelope.Envelope) { e.Header.Stanzas[0].KDF = 2 }, envelope.ErrMalformed, nil},
		{"unknown stanza kind", func(e *envelope.Envelope) { e.Header.Stanzas[0].Kind = 3 }, envelope.ErrMalformed, nil},
		{"short wrapped DEK", func(e *envelope.Envelope) { e.Header.Stanzas[0].WrappedDEK = e.Header.Stanzas[0].WrappedDEK[:32] }, envelope.ErrMalformed, nil},
		{"bad transaction id", func(e *envelope.Envelope) { e.Header.TransactionID = "-tx" }, envelope.ErrInvalidID, nil},
		{"empty job id", func(e *envelope.Envelope) { e.Header.JobID = "" }, envelope.ErrInvalidID, nil},
		{"no participants", func(e *envelope.Envelope) {
			e.Header.Participants = nil
			e.Header.Stanzas = e.Header.Stanzas[3:]
		}, envelope.ErrMalformed, nil},
		{"short nonce", func(e *envelope.Envelope) { e.Nonce = e.Nonce[:11] }, envelope.ErrMalformed, nil},
		{"ciphertext shorter than tag", func(e *envelope.Envelope) { e.Ciphertext = e.Ciphertext[:15] }, envelope.ErrMalformed, nil},
		{"ciphertext over MaxPlaintext", func(e *envelope.Envelope) {
			e.Ciphertext = make([]byte, envelope.MaxPlaintext+envelope.TagSize+1)
		}, envelope.ErrTooLarge, nil},
		{"65 participants", func(e *envelope.Envelope) {
			h := &e.Header
			esc := h.Stanzas[3]
			h.Participants, h.Stanzas = nil, nil
			for i := 0; i < envelope.MaxParticipants+1; i++ {
				id := "p" + strings.Repeat("x", i)
				h.Participants = append(h.Participants, id)
				st := f.env.Header.Stanzas[0]
				st.ParticipantID = id
				h.Stanzas = append(h.Stanzas, st)
			}
			h.Stanzas = append(h.Stanzas, esc)
		}, envelope.ErrTooLarge, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e, err := mutate(t, f, c.m)
			if c.parseErr != nil {
				if !errors.Is(err, c.parseErr) {
					t.Fatalf("Parse = %v, want %v", err, c.parseErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if err := e.Verify(f.signer.lookup); !errors.Is(err, c.verifyErr) {
				t.Fatalf("Verify = %v, want %v", err, c.verifyErr)
			}
		})
	}
}

// TestSwapPayload checks the AAD binding: two envelopes sealed with the same
// DEK and nonce (only possible with a fixed random stream) for different
// transactions; moving one payload into the other's header must not open,
// although the header still verifies.
func TestSwapPayload(t *testing.T) {
	stream := bytes.Repeat([]byte{0x42}, 32+12+5*32)
	f := newFixture(t, "tx-A")
	inA, inB := f.in, f.in
	inB.TransactionID = "tx-B"
	inA.Rand, inB.Rand = bytes.NewReader(stream), bytes.NewReader(stream)
	a, err := envelope.Seal(context.Background(), inA, f.signer)
	if err != nil {
		t.Fatal(err)
	}
	b, err := envelope.Seal(context.Background(), inB, f.signer)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.EqualFunc(a.Header.Stanzas, b.Header.Stanzas, func(x, y envelope.Stanza) bool { return bytes.Equal(x.WrappedDEK, y.WrappedDEK) }) {
		t.Fatal("test setup: stanzas differ")
	}
	if !f.opensAny(a) || !f.opensAny(b) {
		t.Fatal("untampered envelopes do not open")
	}
	a.Ciphertext = b.Ciphertext
	if err := a.Verify(f.signer.lookup); err != nil {
		t.Fatalf("Verify = %v (the signature does not cover the payload)", err)
	}
	if f.opensAny(a) {
		t.Fatal("payload of tx-B opened under tx-A's header")
	}
	// The stanzas, however, are not bound to the payload: that is what lets a
	// rewrap replace them. Moving all of b's stanzas into a breaks the signature.
	c, _ := envelope.Parse(f.env.Marshal())
	c.Header.Stanzas = b.Header.Stanzas
	if err := c.Verify(f.signer.lookup); !errors.Is(err, envelope.ErrSignature) {
		t.Fatalf("Verify = %v, want ErrSignature", err)
	}
}

func TestParseFraming(t *testing.T) {
	f := newFixture(t, "tx-frame")
	b := f.env.Marshal()
	for n := 0; n < len(b); n++ {
		if _, err := envelope.Parse(b[:n]); !errors.Is(err, envelope.ErrMalformed) {
			t.Fatalf("Parse(first %d of %d bytes) = %v, want ErrMalformed", n, len(b), err)
		}
	}
	if _, err := envelope.Parse(append(bytes.Clone(b), 0)); !errors.Is(err, envelope.ErrMalformed) {
		t.Errorf("trailing byte: %v", err)
	}
	for _, v := range []byte{0, 3, 255} { // 1 and 2 are known versions
		c := bytes.Clone(b)
		c[12] = v
		if _, err := envelope.Parse(c); !errors.Is(err, envelope.ErrVersion) {
			t.Errorf("version %d: %v, want ErrVersion", v, err)
		}
	}
	c := bytes.Clone(b)
	c[0] ^= 1
	if _, err := envelope.Parse(c); !errors.Is(err, envelope.ErrMalformed) {
		t.Errorf("bad magic: %v", err)
	}
	big := make([]byte, envelope.MaxEnvelopeSize+1)
	copy(big, b)
	if _, err := envelope.Parse(big); !errors.Is(err, envelope.ErrTooLarge) {
		t.Errorf("oversize: %v", err)
	}
	if _, err := envelope.ParseText(strings.Repeat("A", envelope.MaxTextSize+1)); !errors.Is(err, envelope.ErrTooLarge) {
		t.Errorf("oversize text: %v", err)
	}
}

func TestParseTextStrict(t *testing.T) {
	f := newFixture(t, "tx-text")
	txt := f.env.Text()
	std := base64.RawStdEncoding.EncodeToString(f.env.Marshal())
	cases := map[string]string{
		"padding":        txt + strings.Repeat("=", (4-len(txt)%4)%4+4),
		"newline":        txt[:40] + "\n" + txt[40:],
		"CR":             txt[:40] + "\r" + txt[40:],
		"space":          txt[:40] + " " + txt[40:],
		"std alphabet":   strings.NewReplacer("-", "+", "_", "/").Replace(txt),
		"truncated char": txt[:len(txt)-1],
		"empty":          "",
	}
	if std != txt {
		cases["std encoding"] = std
	}
	for name, s := range cases {
		if s == txt {
			continue
		}
		if _, err := envelope.ParseText(s); !errors.Is(err, envelope.ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
	// Non-canonical trailing bits: change the last character so only unused
	// bits differ, when the length leaves unused bits.
	if len(txt)%4 != 0 {
		alphabet := "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
		last := strings.IndexByte(alphabet, txt[len(txt)-1])
		bad := txt[:len(txt)-1] + string(alphabet[last|1])
		if bad != txt {
			if _, err := envelope.ParseText(bad); !errors.Is(err, envelope.ErrMalformed) {
				t.Errorf("non-canonical trailing bits: %v", err)
			}
		}
	}
}

func TestVerifyKeys(t *testing.T) {
	f := newFixture(t, "tx-keys")
	other := newSigner(t, f.signer.id)
	if err := f.env.Verify(other.lookup); !errors.Is(err, envelope.ErrSignature) {
		t.Errorf("wrong key: %v", err)
	}
	err := f.env.Verify(func(string) (*ecdsa.PublicKey, error) { return nil, errUnknownKey })
	if !errors.Is(err, envelope.ErrSignature) || !errors.Is(err, errUnknownKey) {
		t.Errorf("lookup error: %v, want ErrSignature wrapping it", err)
	}
	if err := f.env.Verify(func(string) (*ecdsa.PublicKey, error) { return nil, nil }); !errors.Is(err, envelope.ErrSignature) {
		t.Errorf("nil key: %v", err)
	}
	if err := f.env.Verify(nil); !errors.Is(err, envelope.ErrSignature) {
		t.Errorf("nil lookup: %v", err)
	}
	if err := f.env.Verify(f.signer.lookup); err != nil {
		t.Errorf("right key: %v", err)
	}
}

type badSigner struct {
	id  string
	sig []byte
	err error
}

func (b badSigner) KeyID() string { return b.id }
func (b badSigner) Sign(context.Context, []byte) ([]byte, error) {
	return b.sig, b.err
}

func TestSealInputs(t *testing.T) {
	f := newFixture(t, "tx-in")
	errHSM := errors.New("hsm down")
	cases := []struct {
		name string
		m    func(in *envelope.SealInput)
		s    envelope.Signer
		want error
	}{
		{"bad tx id", func(in *envelope.SealInput) { in.TransactionID = "a b" }, nil, envelope.ErrInvalidID},
		{"empty job id", func(in *envelope.SealInput) { in.JobID = "" }, nil, envelope.ErrInvalidInput},
		{"no participants", func(in *envelope.SealInput) { in.Participants = nil }, nil, envelope.ErrInvalidInput},
		{"duplicate participant", func(in *envelope.SealInput) {
			in.Participants = append(slices.Clone(in.Participants), in.Participants[0])
		}, nil, envelope.ErrInvalidInput},
		{"too many participants", func(in *envelope.SealInput) {
			in.Participants = nil
			for i := 0; i <= envelope.MaxParticipants; i++ {
				r := f.in.Escrow
				r.ID = "p" + strings.Repeat("x", i)
				in.Participants = append(in.Participants, r)
			}
		}, nil, envelope.ErrTooLarge},
		{"short X25519 key", func(in *envelope.SealInput) {
			in.Participants = slices.Clone(in.Participants)
			in.Participants[0].Public = in.Participants[0].Public[:31]
		}, nil, envelope.ErrInvalidInput},
		{"low-order X25519 key", func(in *envelope.SealInput) {
			in.Participants = slices.Clone(in.Participants)
			in.Participants[0].Public = make([]byte, 32)
		}, nil, envelope.ErrInvalidInput},
		{"P-256 point off curve", func(in *envelope.SealInput) {
			in.Escrow.Public = bytes.Clone(in.Escrow.Public)
			in.Escrow.Public[10] ^= 1
		}, nil, envelope.ErrInvalidInput},
		{"X25519 escrow", func(in *envelope.SealInput) { in.Escrow = in.Participants[0]; in.Escrow.ID = "" }, nil, envelope.ErrInvalidInput},
		{"escrow with id", func(in *envelope.SealInput) { in.Escrow.ID = "escrow" }, nil, envelope.ErrInvalidInput},
		{"plaintext too large", func(in *envelope.SealInput) { in.Plaintext = make([]byte, envelope.MaxPlaintext+1) }, nil, envelope.ErrTooLarge},
		{"public fields not an object", func(in *envelope.SealInput) { in.PublicFields = []byte(`[1]`) }, nil, envelope.ErrInvalidJSON},
		{"public fields too large", func(in *envelope.SealInput) {
			in.PublicFields = []byte(`{"a":"` + strings.Repeat("x", envelope.MaxPublicFields) + `"}`)
		}, nil, envelope.ErrTooLarge},
		{"before 1970", func(in *envelope.SealInput) { in.CreatedAt = time.Unix(-1, 0) }, nil, envelope.ErrInvalidInput},
		{"nil signer", func(in *envelope.SealInput) {}, badSigner{}, envelope.ErrInvalidInput},
		{"bad signer id", func(in *envelope.SealInput) {}, badSigner{id: "", sig: make([]byte, 64)}, envelope.ErrInvalidID},
		{"short signature", func(in *envelope.SealInput) {}, badSigner{id: "k", sig: make([]byte, 63)}, envelope.ErrInvalidInput},
		{"signer error", func(in *envelope.SealInput) {}, badSigner{id: "k", err: errHSM}, errHSM},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := f.in
			c.m(&in)
			var s envelope.Signer = f.signer
			if c.s != nil {
				s = c.s
			}
			if c.name == "nil signer" {
				s = nil
			}
			e, err := envelope.Seal(context.Background(), in, s)
			if !errors.Is(err, c.want) || e != nil {
				t.Fatalf("Seal = %v, %v; want %v", e, err, c.want)
			}
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := envelope.Seal(ctx, f.in, f.signer); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: %v", err)
	}
	// Defaults: empty public fields become {}, zero time becomes now.
	in := f.in
	in.PublicFields, in.CreatedAt = nil, time.Time{}
	before := time.Now().Add(-time.Second)
	e, err := envelope.Seal(context.Background(), in, f.signer)
	if err != nil {
		t.Fatal(err)
	}
	if string(e.Header.PublicFields) != "{}" || e.Header.CreatedAt.Before(before) || e.Header.CreatedAt.Location() != time.UTC {
		t.Errorf("defaults: %s %v", e.Header.PublicFields, e.Header.CreatedAt)
	}
	// Largest plaintext seals, and the envelope parses.
	in.Plaintext = make([]byte, envelope.MaxPlaintext)
	if e, err = envelope.Seal(context.Background(), in, f.signer); err != nil {
		t.Fatal(err)
	}
	if _, err := envelope.Parse(e.Marshal()); err != nil {
		t.Fatal(err)
	}
}

// TestMaxHeaderFits builds the largest header the limits allow and checks a
// MaxPlaintext envelope with it is within MaxEnvelopeSize.
func TestMaxHeaderFits(t *testing.T) {
	f := newFixture(t, strings.Repeat("t", envelope.MaxIDLength))
	e, _ := envelope.Parse(f.env.Marshal())
	h := &e.Header
	h.JobID = strings.Repeat("j", envelope.MaxIDLength)
	h.SigningKeyID = strings.Repeat("k", envelope.MaxIDLength)
	h.PublicFields = []byte(`{"a":"` + strings.Repeat("x", envelope.MaxPublicFields-8) + `"}`)
	esc := h.Stanzas[len(h.Stanzas)-1]
	h.Participants, h.Stanzas = nil, nil
	for i := 0; i < envelope.MaxParticipants; i++ {
		id := strings.Repeat("p", envelope.MaxIDLength-2) + string(rune('A'+i/26)) + string(rune('a'+i%26))
		h.Participants = append(h.Participants, id)
		st := esc
		st.Kind, st.ParticipantID = envelope.StanzaParticipant, id
		h.Stanzas = append(h.Stanzas, st)
	}
	h.Stanzas = append(h.Stanzas, esc)
	e.Ciphertext = make([]byte, envelope.MaxPlaintext+envelope.TagSize)
	if err := e.Validate(); err != nil {
		t.Fatal(err)
	}
	b := e.Marshal()
	t.Logf("largest envelope: %d bytes (limit %d)", len(b), envelope.MaxEnvelopeSize)
	if _, err := envelope.Parse(b); err != nil {
		t.Fatal(err)
	}
}

func TestValidateID(t *testing.T) {
	good := []string{"a", "A", "0", "alice", "bank-b", "tx:2025.01_01-x", strings.Repeat("z", 128)}
	bad := []string{"", "-a", ".a", ":a", "_a", "a b", "a/b", "ä", "a\x00", strings.Repeat("z", 129), "a\n"}
	for _, id := range good {
		if err := envelope.ValidateID(id); err != nil {
			t.Errorf("ValidateID(%q) = %v", id, err)
		}
	}
	for _, id := range bad {
		if err := envelope.ValidateID(id); !errors.Is(err, envelope.ErrInvalidID) {
			t.Errorf("ValidateID(%q) = %v, want ErrInvalidID", id, err)
		}
	}
}

func TestOpenRequest(t *testing.T) {
	f := newFixture(t, "tx-req")
	e := f.env
	i, _ := e.ParticipantStanza("bank-b")
	req := e.OpenRequest(i, "participant/bank-b/v1", f.parties[1].Public)
	st := e.Header.Stanzas[i]
	if req.KeyLabel != "participant/bank-b/v1" || req.Alg != hsm.P256 || req.KDF != hsm.KDFECBContext ||
		!bytes.Equal(req.PeerPublic, st.EphemeralPublic) || !bytes.Equal(req.WrappedDEK, st.WrappedDEK) ||
		!bytes.Equal(req.Nonce, e.Nonce) || !bytes.Equal(req.Ciphertext, e.Ciphertext) || !bytes.Equal(req.AAD, e.AAD()) {
		t.Fatalf("OpenRequest = %+v", req)
	}
	if req.Context != envelope.KDFContext(hsm.P256, hsm.KDFECBContext, st.EphemeralPublic, f.parties[1].Public) {
		t.Fatal("context")
	}
	// A wrong recipient public key changes the context, so the open fails.
	if c2 := e.OpenRequest(i, "x", f.parties[3].Public).Context; c2 == req.Context {
		t.Fatal("context does not bind the recipient key")
	}
	if !bytes.HasPrefix(e.AAD(), []byte(envelope.LabelPayloadAAD+"\x00\x01")) ||
		!bytes.HasPrefix(e.SignedMessage(), append([]byte(envelope.LabelHeaderSignature+"\x00"), e.AAD()[len(envelope.LabelPayloadAAD)+1:]...)) {
		t.Fatal("AAD and signed message do not share the binding encoding")
	}
}
