package server_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"custody/internal/envelope"
)

// runConcurrently runs n calls of op spread over clients goroutines and
// returns the wall time.
func runConcurrently(b *testing.B, n, clients int, op func() error) time.Duration {
	var wg sync.WaitGroup
	var once sync.Once
	start := time.Now()
	for c := range clients {
		share := n / clients
		if c < n%clients {
			share++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range share {
				if err := op(); err != nil {
					once.Do(func() { b.Error(err) })
					return
				}
			}
		}()
	}
	wg.Wait()
	return time.Since(start)
}

// BenchmarkDecryptSocketVsRaw measures a decrypt through the whole daemon
// (socket, HTTP, JSON, parse, verify, policy, record, filter) against the
// bare on-device open chain (hsm.Token.Open) on the same token and sessions,
// alternating the two in the same run. "socket-same" decrypts one envelope
// over and over (its header signature is verified once, then found in the
// verified-header cache); "socket-distinct" cycles through more distinct
// envelopes than that cache holds, so every request verifies the ECDSA
// signature. Reported: the rates and the ratios to raw (goal ≥ 0.85 at 2
// clients). The DEK handle cache is off: raw opens one stanza again and
// again, which the cache would turn into hits.
func BenchmarkDecryptSocketVsRaw(b *testing.B) {
	h := newHarnessNoCache(b)
	h.register("client-1", "miner-1")
	const distinct = 5000 // > the server's verified-header cache
	var bodies []string
	for start := 0; start < distinct; start += 50 {
		var items []map[string]any
		for i := start; i < start+50; i++ {
			items = append(items, map[string]any{"transaction_id": fmt.Sprintf("tx-%d", i), "job_id": "job-1",
				"confidential": map[string]any{"amount": "1000", "pricing": map[string]any{"gpu_hour": "2.50"}},
				"participants": []string{"client-1", "miner-1"}})
		}
		st, out := h.call("POST", "/v1/transactions/encrypt/batch", map[string]any{"items": items})
		if st != 200 {
			b.Fatalf("sealing: %d %v", st, out)
		}
		for _, r := range out["results"].([]any) {
			env := r.(map[string]any)["result"].(map[string]any)["envelope"].(string)
			bodies = append(bodies, fmt.Sprintf(`{"envelope":%q,"as":"miner-1","purpose":"settlement"}`, env))
		}
	}
	env, err := envelope.ParseText(bodies[0][len(`{"envelope":"`):strings.Index(bodies[0], `","as"`)])
	if err != nil {
		b.Fatal(err)
	}
	i, _ := env.ParticipantStanza("miner-1")
	key, _ := h.keys.ParticipantVersion("miner-1", 1)
	// Raw: the on-device part of that decrypt (envelope v2: the two fields
	// settlement may see).
	req, err := env.OpenFieldsRequest(i, key.Label, key.Public, []int{env.FieldIndex("amount"), env.FieldIndex("pricing")})
	if err != nil {
		b.Fatal(err)
	}
	raw := func() error {
		_, err := h.token.OpenFields(context.Background(), req)
		return err
	}
	decrypt := func(body string) error {
		if st, out := h.callRaw("POST", "/v1/transactions/decrypt", body); st != 200 {
			return fmt.Errorf("decrypt: %d %s", st, out)
		}
		return nil
	}
	same := func() error { return decrypt(bodies[0]) }
	var next atomic.Uint64
	distinctOp := func() error { return decrypt(bodies[next.Add(1)%distinct]) }
	for _, clients := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			n := max(b.N, 6*clients)
			var rawT, sameT, distT time.Duration
			for range 2 { // interleave to share the machine's noise
				rawT += runConcurrently(b, n/6, clients, raw)
				sameT += runConcurrently(b, n/6, clients, same)
				distT += runConcurrently(b, n/6, clients, distinctOp)
			}
			rate := func(d time.Duration) float64 { return float64(n/3) / d.Seconds() }
			b.ReportMetric(rate(rawT), "raw-opens/s")
			b.ReportMetric(rate(sameT), "socket-same/s")
			b.ReportMetric(rate(distT), "socket-distinct/s")
			b.ReportMetric(rate(sameT)/rate(rawT), "ratio-same")
			b.ReportMetric(rate(distT)/rate(rawT), "ratio-distinct")
		})
	}
}

// softSigner signs in software: the baseline's signature costs what Go's
// ECDSA costs, not what the token's does.
type softSigner struct{ k *ecdsa.PrivateKey }

func (s softSigner) KeyID() string { return "bench:soft" }
func (s softSigner) Sign(_ context.Context, digest []byte) ([]byte, error) {
	r, ss, err := ecdsa.Sign(rand.Reader, s.k, digest)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 64)
	r.FillBytes(out[:32])
	ss.FillBytes(out[32:])
	return out, nil
}

// BenchmarkEncrypt3Participants measures sealing for three participants plus
// the escrow key: the bare software seal (software signature), the seal with
// the header signed inside the HSM, and the whole daemon through the socket,
// in the same run. Reported: envelopes/s of each and socket/bare.
func BenchmarkEncrypt3Participants(b *testing.B) {
	h := newHarness(b)
	ids := []string{"client-1", "miner-1", "miner-2"}
	h.register(ids...)
	var recips []envelope.Recipient
	for _, id := range ids {
		v, _ := h.keys.Active(id)
		recips = append(recips, envelope.Recipient{ID: id, KeyVersion: v.Number, Alg: v.Alg, Public: v.Public})
	}
	esc, _ := h.keys.Escrow()
	hsmSigner, _ := h.keys.Signer()
	sk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	in := envelope.SealInput{TransactionID: "tx-bench", JobID: "job-1", PublicFields: []byte(`{"job_id":"job-1"}`),
		Plaintext: []byte(`{"amount":"1000","pricing":{"gpu_hour":"2.50"}}`), Participants: recips,
		Escrow: envelope.Recipient{KeyVersion: esc.Number, Alg: esc.Alg, Public: esc.Public}, CreatedAt: time.Now()}
	seal := func(s envelope.Signer) func() error {
		return func() error { _, err := envelope.Seal(context.Background(), in, s); return err }
	}
	body := `{"transaction_id":"tx-bench","job_id":"job-1","public_data":{"job_id":"job-1"},` +
		`"confidential":{"amount":"1000","pricing":{"gpu_hour":"2.50"}},"participants":["client-1","miner-1","miner-2"]}`
	socket := func() error {
		if st, out := h.callRaw("POST", "/v1/transactions/encrypt", body); st != 200 {
			return fmt.Errorf("encrypt: %d %s", st, out)
		}
		return nil
	}
	n := max(b.N, 8)
	var bare, signed, sock time.Duration
	for range 2 {
		bare += runConcurrently(b, n/2, 2, seal(softSigner{sk}))
		signed += runConcurrently(b, n/2, 2, seal(hsmSigner))
		sock += runConcurrently(b, n/2, 2, socket)
	}
	rate := func(d time.Duration) float64 { return float64(n) / d.Seconds() }
	b.ReportMetric(rate(bare), "bare-seals/s")
	b.ReportMetric(rate(signed), "hsm-signed-seals/s")
	b.ReportMetric(rate(sock), "socket-encrypts/s")
	b.ReportMetric(rate(sock)/rate(bare), "ratio-socket/bare")
}

// BenchmarkLeakCheck runs N decrypts through the socket (2 clients) after a
// 10,000-decrypt warm-up and reports the session objects left on the token
// (must be 0) and the process RSS after the warm-up and after the run. N is
// CUSTODY_BENCH_LEAK_DECRYPTS (default 10,000; issue 14's goal is stated
// for 100,000). The warm-up is long enough to include SoftHSM module
// recycles (hsm doc, "Memory"), so the two RSS figures compare steady
// states. The daemon runs in the benchmark's process, so RSS includes the
// clients; on SoftHSM 2.6.1 it also grows about 1.5 MB per 10,000 X25519
// opens that the module loses (hsm doc, "Memory"), which is why the Go heap
// is logged beside it. The DEK handle cache is off: with it every decrypt
// of the one envelope would be a hit and the chain whose objects could
// leak would not run.
func BenchmarkLeakCheck(b *testing.B) {
	n := 10000
	if v, err := strconv.Atoi(os.Getenv("CUSTODY_BENCH_LEAK_DECRYPTS")); err == nil && v > 0 {
		n = v
	}
	h := newHarnessNoCache(b)
	h.register("client-1")
	text := h.seal("tx-leak", "client-1")
	body := fmt.Sprintf(`{"envelope":%q,"as":"client-1","purpose":"dispute"}`, text)
	op := func() error {
		if st, out := h.callRaw("POST", "/v1/transactions/decrypt", body); st != 200 {
			return fmt.Errorf("decrypt: %d %s", st, out)
		}
		return nil
	}
	logMem := func(when string) int {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		rss := rssKiB(b)
		b.Logf("%s: rss %d KiB, go heap in use %d KiB, module recycles %d", when, rss, ms.HeapInuse>>10, h.token.Info().Recycles)
		return rss
	}
	for b.Loop() {
		runConcurrently(b, 10000, 2, op)
		warm := logMem("after the 10,000-decrypt warm-up")
		d := runConcurrently(b, n, 2, op)
		after := logMem(fmt.Sprintf("after %d more", n))
		objs, err := h.token.SessionObjectCount(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		if objs != 0 {
			b.Errorf("%d session objects leaked on the token", objs)
		}
		b.ReportMetric(float64(objs), "session-objects")
		b.ReportMetric(float64(warm)/1024, "rss-warm-MiB")
		b.ReportMetric(float64(after)/1024, "rss-after-MiB")
		b.ReportMetric(float64(n)/d.Seconds(), "decrypts/s")
	}
}

func rssKiB(b *testing.B) int {
	runtime.GC()
	return vmRSSKiB(b)
}

// vmRSSKiB is this process's resident set now, as the kernel counts it.
func vmRSSKiB(b *testing.B) int {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			var kib int
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kib)
			return kib
		}
	}
	b.Fatal("no VmRSS")
	return 0
}
