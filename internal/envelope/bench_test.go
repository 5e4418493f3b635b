package envelope_test

import (
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
