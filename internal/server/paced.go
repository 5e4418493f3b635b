package server

// Pacing bulk work by live latency: the daemon times every live
// single-envelope request and marks the bulk work (Server.rewrapItems,
// after the caller was authorized) in a priority.Watch; each
// answer of the batch rewrap carries the report, by which a bulk client
// slows itself down (custodyctl rewrap --postgres, docs/store.md "Pacing").
// The daemon does not hold bulk work back itself: what slows live requests
// during a store rewrap is mostly the client's own database writes between
// its calls, which only the client can spread out.

import (
	"strings"
	"time"

	"custody/internal/api"
	"custody/internal/priority"
)

// liveRoute says whether rt's latency is a live sample: one envelope
// sealed or opened for an application or an auditor.
func liveRoute(rt route) bool {
	switch rt.op {
	case "decrypt", "encrypt", "audit-decrypt":
		return !strings.HasSuffix(rt.pattern, "/batch")
	}
	return false
}

// liveLatency is the wire form of the watch's report; nil before any
// live request was timed.
func liveLatency(r priority.LiveReport) *api.LiveLatency {
	if r.Samples == 0 && r.IdleP99 == 0 {
		return nil
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	return &api.LiveLatency{Samples: r.Samples, P99MS: ms(r.P99), IdleP99MS: ms(r.IdleP99)}
}
