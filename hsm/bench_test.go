package hsm_test

import (
	"crypto/sha256"
	"strings"
	"testing"
	"time"

	"custody/hsm"
	"custody/hsm/hsmtest"
	"custody/internal/testutil"
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
	defer testutil.ReportCPU(b)()
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
	b.ResetTimer()
	defer testutil.ReportCPU(b)()
	for b.Loop() {
		if _, err := tok.Sign(ctx, key.Label, d[:]); err != nil {
			b.Fatal(err)
		}
	}
}

// benchOpenFields measures OpenFields of nFields 64-byte fields (the v2
// device chain: ECDH derive, ECB derive, KWP unwrap, then per field an ECB
// derive, a GCM decrypt and a destroy) from all GOMAXPROCS goroutines.
func benchOpenFields(b *testing.B, nFields int, cache bool) {
	cfg := hsmtest.NewToken(b)
	if cache {
		cfg.DEKCache = hsm.DEKCacheConfig{Entries: 1024, MaxAge: time.Hour, Recheck: time.Second}
	}
	tok := openConfig(b, cfg)
	ctx := testCtx(b)
	key := genKey(b, tok, "bench-fields", hsm.X25519, hsm.UsageDerive)
	values := make([]string, nFields)
	for i := range values {
		values[i] = `"` + strings.Repeat("v", 62) + `"`
	}
	reqs := make([]hsm.OpenFieldsRequest, 256)
	for i := range reqs {
		reqs[i] = fieldsRequest(b, seal(b, key, []byte("unused"), nil), values...)
	}
	b.ReportAllocs()
	b.ResetTimer()
	defer testutil.ReportCPU(b)()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := tok.OpenFields(ctx, reqs[i%len(reqs)]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}

// BenchmarkOpenFields1 and BenchmarkOpenFields4 are the v2 device chain
// for one and four fields (compare with BenchmarkOpenX25519, the v1 chain).
func BenchmarkOpenFields1(b *testing.B) { benchOpenFields(b, 1, false) }
func BenchmarkOpenFields4(b *testing.B) { benchOpenFields(b, 4, false) }

// BenchmarkOpenFields4Cached is BenchmarkOpenFields4 with the DEK handle
// cache on: after the first pass over the 256 stanzas every open is a hit
// (a key-existence check and four GCM decrypts with cached field keys).
func BenchmarkOpenFields4Cached(b *testing.B) { benchOpenFields(b, 4, true) }

// benchSealFields measures SealFields of n 64-byte fields (the DEK's
// import, then per field a derive, a GCM encrypt and a destroy) from all
// GOMAXPROCS goroutines.
func benchSealFields(b *testing.B, n int) {
	tok, _ := openToken(b)
	ctx := testCtx(b)
	req := hsm.SealFieldsRequest{DEK: make([]byte, 32)}
	for i := range n {
		req.Fields = append(req.Fields, hsm.FieldSeal{Context: sha256.Sum256([]byte{byte(i)}), Nonce: make([]byte, 12), Plaintext: make([]byte, 64)})
	}
	b.ReportAllocs()
	b.ResetTimer()
	defer testutil.ReportCPU(b)()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := tok.SealFields(ctx, req); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkSealFields4 is the device half of custodybench's encrypt (four
// top-level fields); BenchmarkSealFields5 the one docs/performance.md
// quotes from earlier sessions.
func BenchmarkSealFields4(b *testing.B) { benchSealFields(b, 4) }
func BenchmarkSealFields5(b *testing.B) { benchSealFields(b, 5) }
