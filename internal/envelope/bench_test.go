package envelope_test

import (
	"context"
	"crypto/rand"
	"testing"

	"custody/hsm"
	"custody/internal/envelope"
	"custody/internal/testutil"
)

// BenchmarkWrapAll measures the public-key half of an encrypt, all in
// software: the DEK wrapped for three X25519 participants and the P-256
// escrow key (custodybench's encrypt), each under an ephemeral key of its
// own: eight scalar multiplications (four key pairs, four ECDH) and four
// AES key wraps. cpu-µs/op is what it costs a core; `make bench-vs-vault`
// runs it to show how much of an encrypt it is.
func BenchmarkWrapAll(b *testing.B) {
	in := envelope.SealInput{Escrow: newParty(b, "", hsm.P256).Recipient}
	for _, id := range []string{"client-bench-1", "client-bench-2", "miner-bench-3"} {
		in.Participants = append(in.Participants, newParty(b, id, hsm.X25519).Recipient)
	}
	dek := make([]byte, 32)
	b.ReportAllocs()
	b.ResetTimer()
	defer testutil.ReportCPU(b)()
	for b.Loop() {
		var h envelope.Header
		if err := envelope.WrapAll(rand.Reader, dek, &h, in); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParseVerifyCached measures the software half of a warm decrypt
// before the device: the envelope's text parsed (and validated) and its
// header found in the verified-header cache, as custodyd's decrypt does;
// and the parts alone.
func BenchmarkParseVerifyCached(b *testing.B) {
	f := newFixture(b, "tx-bench")
	f.in.Plaintext, f.in.SealedBy = nil, "app"
	for _, n := range []string{"amount", "iban", "memo", "rate"} {
		f.in.Fields = append(f.in.Fields, envelope.Field{Name: n, Value: []byte(`"12.50"`)})
	}
	e, err := envelope.SealV2(context.Background(), f.in, f.signer, envelope.SoftwareFields{})
	if err != nil {
		b.Fatal(err)
	}
	text := e.Text()
	cache := envelope.NewVerifyCache(16)
	if err := cache.Verify(e, f.signer.lookup); err != nil {
		b.Fatal(err)
	}
	b.Run("parse+verify-hit", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			e, err := envelope.ParseText(text)
			if err != nil {
				b.Fatal(err)
			}
			if err := cache.Verify(e, f.signer.lookup); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("validate", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := e.Validate(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("signed-message", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = e.SignedMessage()
		}
	})
}
