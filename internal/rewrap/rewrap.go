// Package rewrap moves envelopes onto their recipients' current key
// versions without ever seeing a DEK: the device unwraps it through one
// stanza and wraps it again for the new versions, and the host puts the new
// stanzas in and signs the header again. Payload and binding stay
// byte-for-byte the same.
//
// One envelope goes through three steps:
//
//   - plan (on the host): parse the text, verify the header's signature,
//     find every stanza that is not on its recipient's active version (the
//     escrow stanza only when a newer escrow version exists), pick the
//     stanza to unwrap the DEK through (the first, stale ones first, whose
//     key version is still on the token and matches its algorithm) and
//     build the device request (envelope.Envelope.RewrapRequest, one
//     envelope.WrapTarget per moved stanza, so the KDF contexts are
//     envelope's). An envelope already current is answered here.
//   - device: the planned requests of one shard are one Device.RewrapBatch,
//     so the stanzas it writes for one recipient key share an ephemeral key.
//     A run is cut into contiguous shards, at least one per token session
//     and at most ShardSize envelopes each, run side by side.
//   - finish (on the host): replace the moved stanzas (KDF KDFECBContext,
//     the new key versions) and sign the header with the daemon's signing
//     key (envelope.ReplaceStanzas).
//
// Every envelope is then handed to the caller's record function with its
// access-log entry (operation "rewrap": transaction, job, moved
// participants, the key version unwrapped through, "moved …" detail) and
// its error; a result is released only when record returned nil. One
// envelope's failure does not stop the others, and outcomes keep the
// input's order.
//
// The package is cgo-free: the device is the Device interface (custodyd
// passes the metered *hsm.Token). Priority is the caller's business: the
// server marks the context of this bulk work priority.Background so that it
// gives way to every other request waiting for a session.
package rewrap

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"

	"custody/internal/api"
	"custody/internal/auditlog"
	"custody/internal/device"
	"custody/internal/envelope"
	"custody/internal/keys"
)

// Device is what rewrap needs of the key device: one batch of rewraps,
// one result per request in order (hsm.Token.RewrapBatch).
type Device interface {
	RewrapBatch(ctx context.Context, reqs []device.RewrapRequest) []device.RewrapResult
}

// ShardSize bounds the envelopes of one device batch, and so how many new
// stanzas for one recipient share an ephemeral key.
const ShardSize = 32

// MaxRefLength bounds Item.Ref.
const MaxRefLength = 256

// ErrBadItem marks an item refused before it was parsed (no envelope, a
// reference too long). The error's text is the whole message.
var ErrBadItem = errors.New("rewrap: bad item")

type badItem string

func (e badItem) Error() string        { return string(e) }
func (e badItem) Is(target error) bool { return target == ErrBadItem }

// Item is one envelope to rewrap (its text form); Ref is the caller's and
// echoed back untouched. Result is one rewrapped envelope (the input
// itself, Changed false, when it was already current); Moved says which
// stanza moved from which version to which. They are the API's wire forms.
type (
	Item   = api.RewrapItem
	Result = api.Rewrapped
	Moved  = api.Moved
)

// Outcome is the answer for one Item: Result, or Err.
type Outcome struct {
	Result *Result
	Err    error
}

// RecordFunc records one envelope's decision: e its access-log entry, err
// nil when it was rewrapped. A non-nil answer replaces the envelope's
// outcome, and its result is not released. It is called concurrently.
type RecordFunc func(ctx context.Context, e auditlog.Entry, err error) error

// Config is what a Service needs. All fields are required.
type Config struct {
	Keys     *keys.Registry
	Device   Device
	Verified *envelope.VerifyCache // headers whose signature verified (shared with the decrypt path)
	Sessions func() int            // the token's sessions now
}

// Service rewraps envelopes. It is safe for concurrent use.
type Service struct{ c Config }

// New builds a Service; a missing collaborator is an error.
func New(c Config) (*Service, error) {
	switch {
	case c.Keys == nil:
		return nil, errors.New("rewrap: no key registry")
	case c.Device == nil:
		return nil, errors.New("rewrap: no device that can rewrap")
	case c.Verified == nil:
		return nil, errors.New("rewrap: no verify cache")
	case c.Sessions == nil:
		return nil, errors.New("rewrap: no session count")
	}
	return &Service{c: c}, nil
}

// WindowSize is how many envelopes keep every token session busy with one
// shard: ShardSize per session.
func (s *Service) WindowSize() int { return ShardSize * s.sessions() }

func (s *Service) sessions() int { return max(1, s.c.Sessions()) }

// Run rewraps items and records a decision for each through record,
// keeping their order (see the package comment).
func (s *Service) Run(ctx context.Context, items []Item, record RecordFunc) []Outcome {
	out := make([]Outcome, len(items))
	shards := min(s.sessions(), len(items))
	if shards == 0 {
		return out
	}
	size := min(ShardSize, (len(items)+shards-1)/shards)
	// One shard per session at a time: the device cannot go faster, and
	// bulk work that woke every shard at once would fill the Go run queues
	// with CPU-bound planning that a live request's goroutine waits behind.
	running := make(chan struct{}, shards)
	var wg sync.WaitGroup
	for lo := 0; lo < len(items); lo += size {
		hi := min(len(items), lo+size)
		wg.Go(func() {
			running <- struct{}{}
			defer func() { <-running }()
			s.shard(ctx, items[lo:hi], out[lo:hi], record)
		})
	}
	wg.Wait()
	return out
}

// shard plans every item on the host, runs those that move a stanza as one
// batch on the device, then finishes and records each (in parallel, so that
// their access-log entries share a commit).
func (s *Service) shard(ctx context.Context, items []Item, out []Outcome, record RecordFunc) {
	plans := make([]*plan, len(items))
	var reqs []device.RewrapRequest
	var onDevice []int
	for i, in := range items {
		runtime.Gosched() // between two envelopes' planning (a signature verify each), let waiting goroutines run
		plans[i] = s.plan(in)
		if plans[i].err == nil && plans[i].res == nil {
			reqs = append(reqs, plans[i].req)
			onDevice = append(onDevice, i)
		}
	}
	if len(reqs) > 0 {
		results := s.c.Device.RewrapBatch(ctx, reqs)
		for k, i := range onDevice {
			if results[k].Err != nil {
				plans[i].err = results[k].Err
			} else {
				plans[i].wrapped = results[k].Wrapped
			}
		}
	}
	var wg sync.WaitGroup
	for i, p := range plans {
		wg.Go(func() {
			if p.err == nil && p.res == nil {
				p.res, p.err = s.finish(ctx, p)
			}
			if rerr := record(ctx, p.entry, p.err); rerr != nil {
				out[i] = Outcome{Err: rerr}
				return
			}
			out[i] = Outcome{Result: p.res, Err: p.err}
		})
	}
	wg.Wait()
}

// plan is one envelope's rewrap as worked out on the host.
type plan struct {
	entry auditlog.Entry
	err   error   // the item fails with this
	res   *Result // set when the envelope is already current, or when finished

	// For the device and after it.
	ref         string
	env         *envelope.Envelope
	moved       []Moved
	idx         []int          // stanzas to replace
	newVersions []keys.Version // their recipients' active versions
	req         device.RewrapRequest
	wrapped     []device.Rewrapped
}

func (s *Service) plan(in Item) *plan {
	p := &plan{entry: auditlog.Entry{Operation: "rewrap"}, ref: in.Ref}
	p.err = s.planInto(p, in)
	return p
}

func (s *Service) planInto(p *plan, in Item) error {
	if in.Envelope == "" {
		return badItem("envelope: required")
	}
	if len(in.Ref) > MaxRefLength {
		return badItem(fmt.Sprintf("ref: longer than %d bytes", MaxRefLength))
	}
	env, err := envelope.ParseText(in.Envelope)
	if err != nil {
		return err
	}
	h := &env.Header
	p.entry.TransactionID, p.entry.JobID = h.TransactionID, h.JobID
	reg := s.c.Keys
	if err := s.c.Verified.Verify(env, reg.SigningKey); err != nil {
		return err
	}
	p.env = env

	var targets []device.WrapTarget
	esc := env.EscrowStanza()
	for i, st := range h.Stanzas {
		var active keys.Version
		if i == esc {
			if active, err = reg.Escrow(); err != nil {
				return err
			}
			if st.KeyVersion >= active.Number {
				continue
			}
		} else {
			if active, err = reg.Active(st.ParticipantID); err != nil {
				return err
			}
			if st.KeyVersion == active.Number {
				continue
			}
		}
		targets = append(targets, envelope.WrapTarget(active.Alg, active.Public))
		p.idx = append(p.idx, i)
		p.newVersions = append(p.newVersions, active)
		p.moved = append(p.moved, Moved{Participant: st.ParticipantID, Escrow: i == esc, From: st.KeyVersion, To: active.Number})
		p.entry.Participants = append(p.entry.Participants, st.ParticipantID)
	}
	if len(targets) == 0 {
		p.res = &Result{Ref: in.Ref, Envelope: in.Envelope} // already current
		return nil
	}

	order := append([]int(nil), p.idx...)
	for i := range h.Stanzas {
		if !slices.Contains(p.idx, i) {
			order = append(order, i)
		}
	}
	var firstErr error
	for _, i := range order {
		st := h.Stanzas[i]
		var v keys.Version
		if i == esc {
			v, err = reg.EscrowVersion(st.KeyVersion)
		} else {
			v, err = reg.ParticipantVersion(st.ParticipantID, st.KeyVersion)
		}
		if err == nil && v.Alg == st.Alg {
			p.entry.KeyLabel, p.entry.KeyVersion = v.Label, int(v.Number)
			p.req = env.RewrapRequest(i, v.Label, v.Public, targets)
			return nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	if firstErr == nil {
		firstErr = fmt.Errorf("%w: no stanza matches its key's algorithm", envelope.ErrMalformed)
	}
	return firstErr
}

// finish puts the stanzas the device wrapped into the envelope and signs
// its header again.
func (s *Service) finish(ctx context.Context, p *plan) (*Result, error) {
	repl := make(map[int]envelope.Stanza, len(p.idx))
	for k, i := range p.idx {
		old := p.env.Header.Stanzas[i]
		repl[i] = envelope.Stanza{Kind: old.Kind, ParticipantID: old.ParticipantID, KeyVersion: p.newVersions[k].Number,
			Alg: p.newVersions[k].Alg, KDF: device.KDFECBContext, EphemeralPublic: p.wrapped[k].EphemeralPublic, WrappedDEK: p.wrapped[k].WrappedDEK}
	}
	signer, err := s.c.Keys.Signer()
	if err != nil {
		return nil, err
	}
	next, err := envelope.ReplaceStanzas(ctx, p.env, repl, signer)
	if err != nil {
		return nil, err
	}
	var moved []string
	for _, m := range p.moved {
		who := m.Participant
		if m.Escrow {
			who = "escrow"
		}
		moved = append(moved, fmt.Sprintf("%s v%d→v%d", who, m.From, m.To))
	}
	p.entry.Detail = "moved " + strings.Join(moved, ", ")
	return &Result{Ref: p.ref, Envelope: next.Text(), Changed: true, Moved: p.moved}, nil
}
