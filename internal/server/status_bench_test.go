package server_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"custody/internal/compliance"
	"custody/internal/orders/vaulttest"
	"custody/internal/server"
)

// BenchmarkDecryptStatusOnOff measures decrypts through the socket with
// participant status checks on (a real Vault, the default cache_ttl of
// compliance.DefaultCacheTTL) and off, in the same run: two servers on the
// same token, keys, policy and recorder, alternating rounds, 2 clients.
// Reported: both rates and on/off (goal ≥ 0.95).
func BenchmarkDecryptStatusOnOff(b *testing.B) {
	vs := vaulttest.Shared(b)
	var deps server.Deps
	sh := newStatusHarnessDeps(b, vs, compliance.DefaultCacheTTL, compliance.DefaultMaxStale, &deps)
	m := sh.miner
	ctx := context.Background()
	rec := compliance.Record{Sanctions: compliance.SanctionsClear, KYC: &compliance.Verification{State: compliance.Verified, Expires: &[]time.Time{time.Date(2027, 6, 30, 0, 0, 0, 0, time.UTC)}[0]}}
	if _, err := sh.store.Put(ctx, m, compliance.Stored{Status: rec, Updated: time.Now(), By: "bench", Reason: "bench", Reference: "bench"}, 0); err != nil {
		b.Fatal(err)
	}
	env, code := sh.sealFor("tx-bench", m)
	if code != "" {
		b.Fatal(code)
	}
	body := fmt.Sprintf(`{"envelope":%q,"as":%q,"purpose":"settlement"}`, env, m)

	deps.Status, deps.Rewrapper, deps.Prover = nil, sh.token, sh.token
	off, err := server.New(deps)
	if err != nil {
		b.Fatal(err)
	}
	offSock := filepath.Join(sh.dir, "off.sock")
	ln, err := server.Listen(offSock, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	go off.Serve(ln)
	b.Cleanup(func() { off.Shutdown(context.Background()) })
	// The same client code for both servers: only the daemon differs.
	clientFor := func(sock string) *http.Client {
		return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	}
	post := func(c *http.Client) func() error {
		return func() error {
			resp, err := c.Post("http://custody/v1/transactions/decrypt", "application/json", strings.NewReader(body))
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			raw, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 {
				return fmt.Errorf("decrypt: %d %s", resp.StatusCode, raw)
			}
			return nil
		}
	}
	offCall, onCall := post(clientFor(offSock)), post(clientFor(sh.socket))
	if err := offCall(); err != nil {
		b.Fatal(err)
	}
	if err := onCall(); err != nil {
		b.Fatal(err)
	}
	// Many short paired rounds, alternating which goes first; the median of
	// the paired ratios resists the noise of a shared machine better than
	// the ratio of totals (both are reported).
	const rounds = 20
	n := max(b.N, 2*rounds)
	per := n / rounds
	var onT, offT time.Duration
	ratios := make([]float64, 0, rounds)
	for r := range rounds {
		var on, offd time.Duration
		if r%2 == 0 {
			offd = runConcurrently(b, per, 2, offCall)
			on = runConcurrently(b, per, 2, onCall)
		} else {
			on = runConcurrently(b, per, 2, onCall)
			offd = runConcurrently(b, per, 2, offCall)
		}
		onT, offT = onT+on, offT+offd
		ratios = append(ratios, offd.Seconds()/on.Seconds()) // rate on / rate off
	}
	slices.Sort(ratios)
	rate := func(d time.Duration) float64 { return float64(per*rounds) / d.Seconds() }
	b.ReportMetric(rate(onT), "status-on/s")
	b.ReportMetric(rate(offT), "status-off/s")
	b.ReportMetric(rate(onT)/rate(offT), "ratio-total")
	b.ReportMetric((ratios[rounds/2-1]+ratios[rounds/2])/2, "ratio-median")
}
