package server

// Key lifecycle routes: rewrap (batch and stream), key list, rotate, retire,
// proof of possession; and the daemon's own due-rotation pass.
//
// Rewrap and proof run on the device through the token's Rewrap and
// ProvePossession (hsm), found on Deps.Token by interface assertion (the
// *hsm.Token and the metered token both have them); a token without them
// answers 501 with code "internal".

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"custody/hsm"
	"custody/internal/auditlog"
	"custody/internal/envelope"
	"custody/internal/keys"
	"custody/internal/pop"
)

// lifecycleToken is what rewrap and proof need from the token beyond Token.
type lifecycleToken interface {
	RewrapBatch(ctx context.Context, reqs []hsm.RewrapRequest) []hsm.RewrapResult
	ProvePossession(ctx context.Context, req hsm.PossessionRequest) ([]byte, error)
}

func (s *Server) lifecycle() (lifecycleToken, error) {
	lt, ok := s.Token.(lifecycleToken)
	if !ok {
		return nil, errors.New("server: the configured token cannot rewrap or prove possession")
	}
	return lt, nil
}

// --- rewrap ---

// rewrapItem is one envelope to rewrap; Ref is echoed back untouched.
type rewrapItem struct {
	Envelope string `json:"envelope"`
	Ref      string `json:"ref,omitempty"`
}

// movedStanza says which stanza moved from which version to which.
type movedStanza struct {
	Participant string `json:"participant,omitempty"` // "" for the escrow stanza
	Escrow      bool   `json:"escrow,omitempty"`
	From        uint32 `json:"from_version"`
	To          uint32 `json:"to_version"`
}

type rewrapResult struct {
	Ref      string        `json:"ref,omitempty"`
	Envelope string        `json:"envelope"`
	Changed  bool          `json:"changed"`
	Moved    []movedStanza `json:"moved,omitempty"`
}

// maxRefLength bounds rewrapItem.Ref.
const maxRefLength = 256

// rewrapEnvelopes: POST /v1/envelopes/rewrap {"items":[{"envelope","ref"}]}.
func (s *Server) rewrapEnvelopes(ctx context.Context, rq *request) (any, error) {
	in, err := decodeBatch[rewrapItem](s, rq)
	if err != nil {
		return nil, err
	}
	out := batchResponse[rewrapResult]{Results: make([]batchResult[rewrapResult], len(in.Items))}
	for i, o := range s.rewrapItems(ctx, rq, in.Items) {
		if o.err != nil {
			out.Results[i].Error = classify(o.err)
		} else {
			out.Results[i].Result = o.res
		}
	}
	return out, nil
}

// rewrapOutcome is the answer for one rewrapItem.
type rewrapOutcome struct {
	res *rewrapResult
	err error
}

// rewrapItems rewraps items and records a decision for each, keeping their
// order. They are cut into contiguous shards, at least one per token
// session and at most rewrapShardSize items each, run side by side; a shard
// is one RewrapBatch on the device, so the stanzas it writes for one
// recipient key share an ephemeral key (hsm.RewrapBatch).
// One item's failure does not stop the others. Rewrap is bulk work: its
// token calls run in the background (hsm.WithBackground) and give way to
// every other request waiting for a session.
func (s *Server) rewrapItems(ctx context.Context, rq *request, items []rewrapItem) []rewrapOutcome {
	ctx = hsm.WithBackground(ctx)
	out := make([]rewrapOutcome, len(items))
	shards := max(1, min(s.Token.Info().Sessions, len(items)))
	size := min(rewrapShardSize, (len(items)+shards-1)/shards)
	var wg sync.WaitGroup
	for lo := 0; lo < len(items); lo += size {
		hi := min(len(items), lo+size)
		wg.Go(func() { s.rewrapShard(ctx, rq, items[lo:hi], out[lo:hi]) })
	}
	wg.Wait()
	return out
}

// rewrapShard works out every item's rewrap on the host, runs those that
// move a stanza as one batch on the device, then signs and records each
// (in parallel, so that their access-log entries share a commit).
func (s *Server) rewrapShard(ctx context.Context, rq *request, items []rewrapItem, out []rewrapOutcome) {
	plans := make([]*rewrapPlan, len(items))
	var reqs []hsm.RewrapRequest
	var onDevice []int
	for i, in := range items {
		plans[i] = s.planRewrap(in)
		if plans[i].err == nil && plans[i].res == nil {
			reqs = append(reqs, plans[i].req)
			onDevice = append(onDevice, i)
		}
	}
	if len(reqs) > 0 {
		lt, err := s.lifecycle()
		var results []hsm.RewrapResult
		if err == nil {
			results = lt.RewrapBatch(ctx, reqs)
		}
		for k, i := range onDevice {
			if err != nil {
				plans[i].err = err
			} else if results[k].Err != nil {
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
				p.res, p.err = s.finishRewrap(ctx, p)
			}
			if rerr := s.record(ctx, rq, p.entry, p.err); rerr != nil {
				out[i] = rewrapOutcome{err: rerr}
				return
			}
			out[i] = rewrapOutcome{res: p.res, err: p.err}
		})
	}
	wg.Wait()
}

// rewrapPlan is one envelope's rewrap as worked out on the host.
type rewrapPlan struct {
	entry auditlog.Entry
	err   error         // the item fails with this
	res   *rewrapResult // set when the envelope is already current, or when finished

	// For the device and after it.
	ref         string
	env         *envelope.Envelope
	moved       []movedStanza
	idx         []int          // stanzas to replace
	newVersions []keys.Version // their recipients' active versions
	req         hsm.RewrapRequest
	wrapped     []hsm.Rewrapped
}

// planRewrap verifies the envelope, finds every stanza that is not on its
// recipient's active version (escrow: only when a newer escrow version
// exists) and picks the stanza to unwrap the DEK through: the first, stale
// ones first, whose key version is still on the token. An envelope already
// current gets its result at once.
func (s *Server) planRewrap(in rewrapItem) *rewrapPlan {
	p := &rewrapPlan{entry: auditlog.Entry{Operation: "rewrap"}, ref: in.Ref}
	p.err = s.planRewrapInto(p, in)
	return p
}

func (s *Server) planRewrapInto(p *rewrapPlan, in rewrapItem) error {
	if in.Envelope == "" {
		return badRequest("envelope: required")
	}
	if len(in.Ref) > maxRefLength {
		return badRequest("ref: longer than %d bytes", maxRefLength)
	}
	env, err := envelope.ParseText(in.Envelope)
	if err != nil {
		return err
	}
	h := &env.Header
	p.entry.TransactionID, p.entry.JobID = h.TransactionID, h.JobID
	if err := s.verified.Verify(env, s.Keys.SigningKey); err != nil {
		return err
	}
	p.env = env

	var targets []hsm.WrapTarget
	esc := env.EscrowStanza()
	for i, st := range h.Stanzas {
		var active keys.Version
		if i == esc {
			if active, err = s.Keys.Escrow(); err != nil {
				return err
			}
			if st.KeyVersion >= active.Number {
				continue
			}
		} else {
			if active, err = s.Keys.Active(st.ParticipantID); err != nil {
				return err
			}
			if st.KeyVersion == active.Number {
				continue
			}
		}
		targets = append(targets, envelope.WrapTarget(active.Alg, active.Public))
		p.idx = append(p.idx, i)
		p.newVersions = append(p.newVersions, active)
		p.moved = append(p.moved, movedStanza{Participant: st.ParticipantID, Escrow: i == esc, From: st.KeyVersion, To: active.Number})
		p.entry.Participants = append(p.entry.Participants, st.ParticipantID)
	}
	if len(targets) == 0 {
		p.res = &rewrapResult{Ref: in.Ref, Envelope: in.Envelope} // already current
		return nil
	}

	order := append([]int(nil), p.idx...)
	for i := range h.Stanzas {
		if !contains(p.idx, i) {
			order = append(order, i)
		}
	}
	var firstErr error
	for _, i := range order {
		st := h.Stanzas[i]
		var v keys.Version
		if i == esc {
			v, err = s.Keys.EscrowVersion(st.KeyVersion)
		} else {
			v, err = s.Keys.ParticipantVersion(st.ParticipantID, st.KeyVersion)
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

// finishRewrap puts the stanzas the device wrapped into the envelope and
// signs its header again; payload and binding stay byte-for-byte the same.
func (s *Server) finishRewrap(ctx context.Context, p *rewrapPlan) (*rewrapResult, error) {
	repl := make(map[int]envelope.Stanza, len(p.idx))
	for k, i := range p.idx {
		old := p.env.Header.Stanzas[i]
		repl[i] = envelope.Stanza{Kind: old.Kind, ParticipantID: old.ParticipantID, KeyVersion: p.newVersions[k].Number,
			Alg: p.newVersions[k].Alg, KDF: hsm.KDFECBContext, EphemeralPublic: p.wrapped[k].EphemeralPublic, WrappedDEK: p.wrapped[k].WrappedDEK}
	}
	signer, err := s.Keys.Signer()
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
	return &rewrapResult{Ref: p.ref, Envelope: next.Text(), Changed: true, Moved: p.moved}, nil
}

func contains(xs []int, x int) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

// streamLine is one line of the streaming rewrap's answer.
type streamLine struct {
	Line int `json:"line"` // 1-based line number of the input
	*rewrapResult
	Error *apiError `json:"error,omitempty"`
}

// ParseRewrapLine parses one line of the streaming rewrap's input: a JSON
// object {"envelope":…,"ref":…} with no other member and nothing after it,
// "envelope" non-empty. It checks the structure only; the envelope itself
// is parsed later. Errors carry the bad_request code.
func ParseRewrapLine(line []byte) (envelopeText, ref string, err error) {
	it, err := parseRewrapLine(line)
	return it.Envelope, it.Ref, err
}

func parseRewrapLine(line []byte) (rewrapItem, error) {
	var it rewrapItem
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&it); err != nil {
		return rewrapItem{}, badRequest("line is not a JSON object {\"envelope\",\"ref\"}: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return rewrapItem{}, badRequest("trailing data after the JSON object")
	}
	if it.Envelope == "" {
		return rewrapItem{}, badRequest("envelope: required")
	}
	return it, nil
}

// rewrapShardSize bounds the envelopes of one device batch, and so how
// many new stanzas for one recipient share an ephemeral key. The streaming
// rewrap reads one shard per token session into a window, rewraps a window
// at a time and keeps rewrapStreamWindows windows in flight.
const (
	rewrapShardSize     = 32
	rewrapStreamWindows = 2
)

// maxStreamLine bounds one input line of the streaming rewrap.
const maxStreamLine = envelope.MaxTextSize + 1024

// streamer is a response written by the handler's own loop (see Server.serve)
// instead of one JSON value.
type streamer interface {
	stream(ctx context.Context, w http.ResponseWriter)
}

type rewrapStream struct {
	s  *Server
	rq *request
}

// rewrapEnvelopesStream: POST /v1/envelopes/rewrap/stream, JSON lines in
// ({"envelope","ref"} per line), JSON lines out (one per input line, in
// order: {"line","ref","envelope","changed","moved"} or {"line","ref","error"}).
// The request is bounded by limits.max_body_bytes and request_timeout like
// any other; a client sends a large set as several requests (custodyctl
// rewrap sends 500 lines per request).
func (s *Server) rewrapEnvelopesStream(ctx context.Context, rq *request) (any, error) {
	if _, err := s.lifecycle(); err != nil {
		return nil, err
	}
	return &rewrapStream{s: s, rq: rq}, nil
}

func (st *rewrapStream) stream(ctx context.Context, w http.ResponseWriter) {
	s := st.s
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	rc := http.NewResponseController(w)
	// Answers go out while the request body is still being read.
	_ = rc.EnableFullDuplex()
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	sc := bufio.NewScanner(st.rq.Body)
	sc.Buffer(make([]byte, 0, 64<<10), maxStreamLine)
	// Lines are rewrapped a window at a time (rewrapItems: one device batch
	// per session). Two windows are in flight so that the device is busy
	// while the other window's answers are signed, logged and written;
	// answers go out in input order.
	size := rewrapShardSize * max(1, s.Token.Info().Sessions)
	type window struct {
		lines   []streamJob
		results chan []streamLine
	}
	inFlight := make(chan *window, rewrapStreamWindows-1)
	slots := make(chan struct{}, rewrapStreamWindows)
	written := make(chan struct{})
	go func() {
		defer close(written)
		for w := range inFlight {
			for _, r := range <-w.results {
				if r.Error != nil && r.rewrapResult != nil {
					_ = enc.Encode(struct {
						Line  int       `json:"line"`
						Ref   string    `json:"ref,omitempty"`
						Error *apiError `json:"error"`
					}{r.Line, r.Ref, r.Error})
					continue
				}
				_ = enc.Encode(r)
			}
			_ = rc.Flush()
		}
	}()
	var lines []streamJob
	send := func() {
		if len(lines) == 0 {
			return
		}
		w := &window{lines: lines, results: make(chan []streamLine, 1)}
		lines = nil
		slots <- struct{}{}
		go func() {
			w.results <- st.rewrapWindow(ctx, w.lines)
			<-slots
		}()
		inFlight <- w
	}
	lineNo := 0
	for sc.Scan() {
		lineNo++
		if len(strings.TrimSpace(sc.Text())) == 0 {
			continue
		}
		lines = append(lines, streamJob{line: lineNo, raw: append([]byte(nil), sc.Bytes()...)})
		if len(lines) == size {
			send()
		}
	}
	send()
	close(inFlight)
	<-written
	if err := sc.Err(); err != nil {
		ae := badRequest("reading line %d: %v", lineNo+1, err)
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			ae = errorf(http.StatusRequestEntityTooLarge, CodeBodyTooLarge, "request body larger than %d bytes; send the rest in another request", mbe.Limit)
		}
		_ = enc.Encode(streamLine{Line: lineNo + 1, Error: ae})
	}
}

// streamJob is one non-blank input line of the streaming rewrap.
type streamJob struct {
	line int
	raw  []byte
}

// rewrapWindow answers one window of input lines, in order.
func (st *rewrapStream) rewrapWindow(ctx context.Context, lines []streamJob) []streamLine {
	results := make([]streamLine, len(lines))
	var items []rewrapItem
	var at []int
	for k, j := range lines {
		results[k] = streamLine{Line: j.line}
		it, err := parseRewrapLine(j.raw)
		if err != nil {
			results[k].Error = classify(err)
			continue
		}
		items = append(items, it)
		at = append(at, k)
	}
	if len(items) == 0 {
		return results
	}
	for n, o := range st.s.rewrapItems(ctx, st.rq, items) {
		k := at[n]
		if o.err == nil {
			results[k].rewrapResult = o.res
			continue
		}
		results[k].Error = classify(o.err)
		if items[n].Ref != "" {
			results[k].rewrapResult = &rewrapResult{Ref: items[n].Ref}
		}
	}
	return results
}

// --- keys ---

type versionView struct {
	Version     uint32     `json:"key_version"`
	State       keys.State `json:"state"`
	Algorithm   string     `json:"algorithm,omitempty"`
	SHA256      string     `json:"sha256,omitempty"`
	Created     time.Time  `json:"created,omitzero"`
	AgeDays     int        `json:"age_days"`
	RotateAfter time.Time  `json:"rotate_after,omitzero"`
	Destroyed   time.Time  `json:"destroyed,omitzero"`
}

type keyView struct {
	Kind         string        `json:"kind"`
	ID           string        `json:"id,omitempty"`
	Active       uint32        `json:"active_version"`
	DueAt        time.Time     `json:"due_at,omitzero"`
	Due          bool          `json:"due"`
	NeedsRewrap  bool          `json:"needs_rewrap"`
	Versions     []versionView `json:"versions"`
	ActiveSHA256 string        `json:"-"`
}

func viewKey(k keys.KeyStatus) keyView {
	out := keyView{Kind: k.Kind, ID: k.ID, Active: k.Active, DueAt: k.DueAt, Due: k.Due, NeedsRewrap: k.Rewrap}
	for _, v := range k.Versions {
		vv := versionView{Version: v.Number, State: v.State, Created: v.Created, AgeDays: int(v.Age / (24 * time.Hour)),
			RotateAfter: v.RotateAfter, Destroyed: v.Destroyed}
		if v.Public != nil {
			vv.Algorithm, vv.SHA256 = v.Alg.String(), v.Fingerprint()
		}
		out.Versions = append(out.Versions, vv)
	}
	return out
}

type keysResponse struct {
	RotateAfter string    `json:"rotate_after"`
	Keys        []keyView `json:"keys"`
}

// listKeys: GET /v1/keys.
func (s *Server) listKeys(ctx context.Context, rq *request) (any, error) {
	out := keysResponse{RotateAfter: s.Keys.RotateAfter().String(), Keys: []keyView{}}
	for _, k := range s.Keys.List(s.Now()) {
		out.Keys = append(out.Keys, viewKey(k))
	}
	return out, nil
}

func pathID(rq *request) (string, error) {
	id := rq.PathValue("id")
	if err := envelope.ValidateID(id); err != nil {
		return "", errorf(http.StatusBadRequest, CodeInvalidID, "id: %v", err)
	}
	return id, nil
}

// rotateKey: POST /v1/keys/{id}/rotate.
func (s *Server) rotateKey(ctx context.Context, rq *request) (any, error) {
	id, err := pathID(rq)
	entry := auditlog.Entry{Operation: "key.rotate", Participant: rq.PathValue("id")}
	var v keys.Version
	if err == nil {
		v, err = s.Keys.Rotate(ctx, id, s.Now())
	}
	if err == nil {
		entry.KeyLabel, entry.KeyVersion = v.Label, int(v.Number)
	}
	if rerr := s.record(ctx, rq, entry, err); rerr != nil {
		return nil, rerr
	}
	if err != nil {
		return nil, err
	}
	st, err := s.Keys.Status(id, s.Now())
	if err != nil {
		return nil, err
	}
	return viewKey(st), nil
}

type retireRequest struct {
	Version          uint32 `json:"version"`
	ConfirmRewrapped bool   `json:"confirm_rewrapped"`
	RewrappedCount   *int64 `json:"rewrapped_count"`
}

// retireKey: POST /v1/keys/{id}/retire {"version","confirm_rewrapped":true,"rewrapped_count":N}.
// The operator attests that every envelope was rewrapped (the count is the
// last rewrap run's); both are recorded. The version is then destroyed.
func (s *Server) retireKey(ctx context.Context, rq *request) (any, error) {
	var in retireRequest
	if err := decodeJSON(rq.Request, &in); err != nil {
		return nil, err
	}
	entry := auditlog.Entry{Operation: "key.retire", Participant: rq.PathValue("id"), KeyVersion: int(in.Version)}
	id, err := pathID(rq)
	switch {
	case err != nil:
	case in.Version == 0:
		err = badRequest("version: required (a version number ≥ 1)")
	case !in.ConfirmRewrapped || in.RewrappedCount == nil || *in.RewrappedCount < 0:
		err = errorf(http.StatusBadRequest, CodeRetireUnconfirmed, "retiring destroys the key version for good: confirm with \"confirm_rewrapped\":true and the \"rewrapped_count\" of your last rewrap run")
	default:
		entry.Detail = fmt.Sprintf("operator confirmed all envelopes rewrapped; last rewrap run: %d envelopes", *in.RewrappedCount)
		var v keys.Version
		v, err = s.Keys.Retire(ctx, id, false, in.Version, s.Now(), rq.principal.Name)
		entry.KeyLabel = v.Label
	}
	if rerr := s.record(ctx, rq, entry, err); rerr != nil {
		return nil, rerr
	}
	if err != nil {
		return nil, err
	}
	st, err := s.Keys.Status(id, s.Now())
	if err != nil {
		return nil, err
	}
	return viewKey(st), nil
}

type proveRequest struct {
	Version         uint32 `json:"version,omitempty"` // 0 = active
	EphemeralPublic string `json:"ephemeral_public"`  // base64
	Nonce           string `json:"nonce"`             // base64, 16..64 bytes
}

type proveResponse struct {
	ID        string `json:"id"`
	Version   uint32 `json:"key_version"`
	Algorithm string `json:"algorithm"`
	PublicKey string `json:"public_key"` // base64
	MAC       string `json:"mac"`        // base64, 16 bytes
}

// proveKey: POST /v1/keys/{id}/prove {"ephemeral_public","nonce","version"}:
// proof of possession (package pop).
func (s *Server) proveKey(ctx context.Context, rq *request) (any, error) {
	var in proveRequest
	if err := decodeJSON(rq.Request, &in); err != nil {
		return nil, err
	}
	entry := auditlog.Entry{Operation: "key.prove", Participant: rq.PathValue("id")}
	res, err := s.prove(ctx, rq, in, &entry)
	if rerr := s.record(ctx, rq, entry, err); rerr != nil {
		return nil, rerr
	}
	if err != nil {
		return nil, err
	}
	return res, nil
}

func (s *Server) prove(ctx context.Context, rq *request, in proveRequest, entry *auditlog.Entry) (*proveResponse, error) {
	id, err := pathID(rq)
	if err != nil {
		return nil, err
	}
	eph, err1 := base64.StdEncoding.DecodeString(in.EphemeralPublic)
	nonce, err2 := base64.StdEncoding.DecodeString(in.Nonce)
	if err1 != nil || err2 != nil {
		return nil, badRequest("ephemeral_public and nonce: standard base64 required")
	}
	if err := pop.CheckNonce(nonce); err != nil {
		return nil, badRequest("nonce: %v", err)
	}
	var v keys.Version
	if in.Version == 0 {
		v, err = s.Keys.Active(id)
	} else {
		v, err = s.Keys.ParticipantVersion(id, in.Version)
	}
	if err != nil {
		return nil, err
	}
	entry.KeyLabel, entry.KeyVersion = v.Label, int(v.Number)
	if c := pop.Curve(v.Alg); c == nil {
		return nil, badRequest("key %s is not an ECDH key", v.Label)
	} else if _, err := c.NewPublicKey(eph); err != nil {
		return nil, badRequest("ephemeral_public: not a %s public key", v.Alg)
	}
	lt, err := s.lifecycle()
	if err != nil {
		return nil, err
	}
	mac, err := lt.ProvePossession(ctx, hsm.PossessionRequest{KeyLabel: v.Label, Alg: v.Alg, VerifierPublic: eph,
		Context: pop.Context(v.Alg, eph, v.Public, nonce), Message: pop.Message(nonce)})
	if err != nil {
		return nil, err
	}
	return &proveResponse{ID: id, Version: v.Number, Algorithm: v.Alg.String(),
		PublicKey: base64.StdEncoding.EncodeToString(v.Public), MAC: base64.StdEncoding.EncodeToString(mac)}, nil
}

// --- the daemon's own rotation pass ---

// RotateDue rotates every participant key whose active version is due at
// s.Now(), logs each rotation and records it in the access log as a daemon
// decision (principal "custodyd", the daemon's own uid/gid/pid). It returns
// how many keys were rotated and the first error; one failure does not
// stop the others. If the access log refuses an entry, the pass stops.
func (s *Server) RotateDue(ctx context.Context) (int, error) {
	self := auditlog.Caller{UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), PID: int32(os.Getpid())}
	n := 0
	var first error
	for _, id := range s.Keys.Due(s.Now()) {
		v, err := s.Keys.Rotate(ctx, id, s.Now())
		e := auditlog.Entry{Time: s.Now().UTC(), Operation: "key.rotate", Caller: self, Principal: "custodyd",
			Participant: id, Outcome: auditlog.Allowed, Detail: "due for rotation"}
		if err != nil {
			e.Outcome, e.Code = auditlog.Failed, classify(err).Code
			s.Log.Error("due rotation failed", "participant", id, "err", err)
			if first == nil {
				first = err
			}
		} else {
			e.KeyLabel, e.KeyVersion = v.Label, int(v.Number)
			s.Log.Info("rotated a due key", "participant", id, "label", v.Label)
			n++
		}
		if rerr := s.Recorder.Record(ctx, e); rerr != nil {
			s.Log.Error("access log refused a rotation entry; stopping the rotation pass", "err", rerr)
			return n, errors.Join(first, rerr)
		}
	}
	return n, first
}

// RunRotation runs RotateDue now and then every interval until ctx ends.
func (s *Server) RunRotation(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if _, err := s.RotateDue(ctx); err != nil {
			s.Log.Warn("rotation pass finished with errors", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
