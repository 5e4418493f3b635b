package hsm_test

import (
	"crypto/sha256"
	"testing"

	"custody/hsm"
)

func benchOpen(b *testing.B, alg hsm.KeyAlg) {
	tok, _ := openToken(b)
	ctx := testCtx(b)
	key := genKey(b, tok, "bench", alg, hsm.UsageDerive)
	// Seal a pool of payloads up front: sealing is software and not measured.
	reqs := make([]hsm.OpenRequest, 256)
	for i := range reqs {
		reqs[i] = seal(b, key, make([]byte, 256), []byte("header")).req
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := tok.Open(ctx, reqs[i%len(reqs)]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}

// BenchmarkOpenX25519 measures the whole device chain (ECDH derive, ECB
// derive, KWP unwrap, GCM decrypt of 256 bytes, three destroys) from all
// GOMAXPROCS goroutines over the pool.
func BenchmarkOpenX25519(b *testing.B) { benchOpen(b, hsm.X25519) }

// BenchmarkOpenP256 is BenchmarkOpenX25519 with a P-256 key.
func BenchmarkOpenP256(b *testing.B) { benchOpen(b, hsm.P256) }

// BenchmarkSign measures one ECDSA P-256 signature on the device.
func BenchmarkSign(b *testing.B) {
	tok, _ := openToken(b)
	ctx := testCtx(b)
	key := genKey(b, tok, "bench-sign", hsm.P256, hsm.UsageSign)
	d := sha256.Sum256([]byte("x"))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tok.Sign(ctx, key.Label, d[:]); err != nil {
			b.Fatal(err)
		}
	}
}
