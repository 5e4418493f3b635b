// Package server is custodyd's API: HTTP/1.1 and JSON on a local Unix socket.
//
// Identity comes only from the socket: at accept, SO_PEERCRED gives the
// peer's uid, gid and pid, which the policy maps to a principal. There are
// no bearer tokens. Every route in the table (routes.go) declares the
// permission it needs; a request is authorized before its handler runs,
// and a route without a permission cannot be written.
//
// Every decision, allowed or denied, goes through Server.record, the one
// place that hands it to the auditlog.Recorder (Server.RecordDaemon for the
// daemon's own decisions, on the same path); a result is released only
// after Record returned nil.
//
// The server is an adapter: its collaborators (Deps) are fixed by New, and
// Handler is the whole API, served by Serve on the socket or by a test with
// httptest and an identity injected with WithPeer (never on the socket,
// where SO_PEERCRED always names the caller).
//
// Errors are JSON {"error":{"code":…,"message":…}} with the stable codes of
// errors.go. Plaintext, DEKs and PINs never reach a log line.
//
// Concurrency: handlers run concurrently (one goroutine per connection, as
// net/http does); the shared state (keys.Registry, policy.Store, the token's
// session pool) is safe for concurrent use. Batch calls fan their items out
// to as many workers as the token has sessions and the caller has
// in-flight slots to spare.
//
// Limits (limit.go): what one Unix user may hold (connections, requests in
// progress, batch workers) and cause (refusals, and the access-log entries
// they leave) is bounded, so that one peer cannot exhaust the daemon, its
// HSM sessions or its log disk for the others.
package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"custody/hsm"
	"custody/internal/api"
	"custody/internal/auditlog"
	"custody/internal/ceremony"
	"custody/internal/config"
	"custody/internal/envelope"
	"custody/internal/keys"
	"custody/internal/policy"
	"custody/internal/priority"
	"custody/internal/rewrap"
)

// Token is what the server needs from the HSM.
type Token interface {
	Open(ctx context.Context, req hsm.OpenRequest) ([]byte, error)
	// OpenFields and SealFields are the envelope v2 field operations: keys
	// derived from the DEK on the device (hsm.Token).
	OpenFields(ctx context.Context, req hsm.OpenFieldsRequest) ([][]byte, error)
	SealFields(ctx context.Context, req hsm.SealFieldsRequest) ([][]byte, error)
	Ping(ctx context.Context) error
	Info() hsm.TokenInfo
	Capabilities() hsm.Capabilities
}

// Deps are the server's collaborators. All are required but AccessLog,
// Now, Version, Observer, Orders and Ceremonies; New refuses Deps that lack
// one.
type Deps struct {
	Token Token
	// Rewrapper and Prover are the device's rewrap and proof of possession
	// (custodyd passes the metered *hsm.Token for both).
	Rewrapper rewrap.Device
	Prover    Prover
	Keys      *keys.Registry
	Policy    *policy.Store
	Recorder  auditlog.Recorder
	// AccessLog serves the reviewer's log routes (logroutes.go); nil makes
	// them answer 503 log_unavailable. Usually the same *auditlog.Log as Recorder.
	AccessLog AccessLog
	Log       *slog.Logger
	Limits    config.Limits
	Now       func() time.Time // nil = time.Now
	Version   string           // shown by health
	Observer  Observer         // nil = no metrics
	Orders    OrderChecker     // court orders in Vault (audit.go); nil interface = audit routes answer vault_unavailable
	// Ceremonies runs the escrow key ceremonies (routes in ceremony.go); nil =
	// the ceremony routes answer ceremony_unavailable.
	Ceremonies *ceremony.Service
	// Status is participants' compliance status (status.go); nil = status
	// checks are off (health says so) and the status routes answer
	// status_unavailable.
	Status StatusStore
	// MFA is the second factor (mfa.go); nil = requests the policy makes
	// need one are refused (mfa_unavailable).
	MFA MFA
}

// Observer is told about every request: its route pattern, "ok" or the
// error code, and how long it took (package metrics implements it).
type Observer interface {
	ObserveRequest(route, code string, d time.Duration)
}

// Server serves the API. Its collaborators are the Deps it was built
// with, fixed by New: nothing outside the package reaches or replaces them
// while it serves.
type Server struct {
	d        Deps
	http     *http.Server
	handler  http.Handler          // the routes, behind Handler's identification
	verified *envelope.VerifyCache // headers whose signature verified
	inFlight *callerLimiter        // requests in progress per uid
	refusals *refusalLimiter       // refusals per uid (token bucket)
	refused  *coalescer            // access-log entries of refusals at the door
	rewrap   *rewrap.Service       // the rewrap routes' work (rewrap.go)
	watch    *priority.Watch       // live requests' latency with and without bulk work (paced.go)
	self     auditlog.Caller       // the daemon's own identity, for RecordDaemon
}

// verifyCacheSize bounds the verified-header cache: 4096 × 32 bytes.
const verifyCacheSize = 4096

// New builds a Server and its route table. A required collaborator
// missing from d is an error.
func New(d Deps) (*Server, error) {
	switch {
	case d.Token == nil, d.Keys == nil, d.Policy == nil, d.Recorder == nil, d.Log == nil:
		return nil, errors.New("server: Deps needs Token, Keys, Policy, Recorder and Log")
	case d.Rewrapper == nil:
		return nil, errors.New("server: Deps needs a Rewrapper (the device's rewrap)")
	case d.Prover == nil:
		return nil, errors.New("server: Deps needs a Prover (the device's proof of possession)")
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	verified := envelope.NewVerifyCache(verifyCacheSize)
	rw, err := rewrap.New(rewrap.Config{Keys: d.Keys, Device: d.Rewrapper, Verified: verified,
		Sessions: func() int { return d.Token.Info().Sessions }})
	if err != nil {
		return nil, err
	}
	s := &Server{d: d, verified: verified, rewrap: rw, watch: priority.NewWatch(),
		self:     daemonCaller(),
		inFlight: &callerLimiter{max: d.Limits.MaxInFlightPerCaller, n: map[uint32]int{}},
		refusals: newRefusalLimiter(d.Limits.RefusalRate, d.Limits.RefusalBurst),
		refused: &coalescer{rec: d.Recorder, log: d.Log, now: d.Now, window: max(d.Limits.RefusalWindow.Std(), time.Second),
			open: map[refusalKey]*refusalWindow{}}}
	mux := http.NewServeMux()
	paths := map[string]bool{}
	for _, rt := range s.routes() {
		mux.Handle(rt.pattern, s.guard(rt))
		_, path, _ := strings.Cut(rt.pattern, " ")
		if !paths[path] {
			paths[path] = true
			mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
				writeError(w, errorf(http.StatusMethodNotAllowed, api.CodeMethodNotAllowed, "%s is not allowed on %s; see docs/api.md", r.Method, path))
			})
		}
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, errorf(http.StatusNotFound, api.CodeNotFound, "no route %s %s; see docs/api.md", r.Method, r.URL.Path))
	})
	s.handler = s.withDeadlines(mux)
	s.http = &http.Server{
		Handler:           s.Handler(),
		ConnContext:       connContext,
		ReadHeaderTimeout: d.Limits.ReadTimeout.Std(),
		IdleTimeout:       d.Limits.IdleTimeout.Std(),
		MaxHeaderBytes:    32 << 10,
		ErrorLog:          slog.NewLogLogger(d.Log.Handler(), slog.LevelWarn),
	}
	return s, nil
}

// daemonCaller is the daemon's own identity in the entries of RecordDaemon.
func daemonCaller() auditlog.Caller {
	c := auditlog.Caller{UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), PID: int32(os.Getpid())}
	c.Executable, _ = os.Executable()
	return c
}

// withDeadlines sets the connection's read and write deadlines for each
// request: limits.request_timeout bounds the connection too, so a client
// that stops sending its body or stops reading the answer cannot hold a
// handler (and its caller's in-flight slot) past it. The write deadline
// leaves a second to send the timeout's error. Every request sets them
// afresh, so a kept-alive connection never carries an old one.
func (s *Server) withDeadlines(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		dl := time.Now().Add(s.d.Limits.RequestTimeout.Std())
		rc := http.NewResponseController(w)
		_ = rc.SetReadDeadline(dl)
		_ = rc.SetWriteDeadline(dl.Add(time.Second))
		next.ServeHTTP(w, r)
	})
}

// Serve accepts connections on ln until Shutdown, at most
// limits.max_connections_per_caller of them per uid.
func (s *Server) Serve(ln net.Listener) error {
	err := s.http.Serve(&connLimiter{Listener: ln, s: s, max: s.d.Limits.MaxConnectionsPerCaller,
		refusing: make(chan struct{}, maxRefusing), n: map[uint32]int{}})
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting, waits for in-flight requests until ctx ends,
// then writes the summary entries of the refusals still being coalesced.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.http.Shutdown(ctx)
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second) // even when ctx has ended
	defer cancel()
	s.refused.flush(fctx)
	return err
}

// request is one authorized call, handed to a handler.
type request struct {
	*http.Request
	peer      peer
	principal policy.Principal
	policy    *policy.Policy // the policy the request was authorized under
	endUser   auditlog.EndUser
	recorded  atomic.Bool // some decision of this request was recorded (record)
	route     string      // the route's pattern
	routeOp   string      // the route's operation name in the access log
	// factorOnce/factorErr: the request's second factor, verified once (mfa.go).
	factorOnce sync.Once
	factorErr  error
}

// handler does the route's work and returns the response body or an error.
type handler func(ctx context.Context, rq *request) (any, error)

// guard wraps a route's handler with the size limit, timeout, identification
// and the route's permission check.
func (s *Server) guard(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		r.Body = http.MaxBytesReader(w, r.Body, s.d.Limits.MaxBodyBytes)
		ctx, cancel := context.WithTimeout(r.Context(), s.d.Limits.RequestTimeout.Std())
		defer cancel()
		body, err := s.serve(ctx, w, r, rt)
		code := "ok"
		_, wrote := body.(streamedResponse)
		switch {
		case err != nil:
			ae := classify(err)
			if ae.Code == api.CodeInternal {
				s.d.Log.Error("request failed", "route", rt.pattern, "err", err)
			}
			code = ae.Code
			writeError(w, ae)
		case wrote:
			// a streaming route has written its own answer
		default:
			writeJSON(w, http.StatusOK, body)
		}
		if liveRoute(rt) && (err == nil || classify(err).Status >= 500) {
			// A server-side failure (a timeout, the log or the device
			// failing) is a live request's latency too; a refusal is not.
			s.watch.Live(time.Since(start))
		}
		if s.d.Observer != nil {
			s.d.Observer.ObserveRequest(rt.pattern, code, time.Since(start))
		}
	})
}

// serve identifies and authorizes the caller, holds one of its in-flight
// slots, and runs the route's handler. A refusal at the door (no
// credentials, no principal, no permission, over a limit) holds the slot
// too, and is recorded through the coalescer.
func (s *Server) serve(ctx context.Context, w http.ResponseWriter, r *http.Request, rt route) (any, error) {
	// The end-user headers are the application's word, recorded as given:
	// record normalizes (clips and marks) every string of an entry.
	rq := &request{Request: r, policy: s.d.Policy.Current(), route: rt.pattern, routeOp: rt.op, endUser: auditlog.EndUser{
		IP:        r.Header.Get("Custody-End-User-IP"),
		UserAgent: r.Header.Get("Custody-End-User-Agent"),
		RequestID: r.Header.Get("Custody-Request-ID"),
	}}
	err := s.authorize(ctx, rq, rt)
	uid := rq.peer.key()
	if !s.inFlight.acquire(uid) {
		err = errorf(http.StatusTooManyRequests, api.CodeRateLimited, "more than %d requests of uid %d in progress (limits.max_in_flight_per_caller); wait for some to finish", s.d.Limits.MaxInFlightPerCaller, rq.peer.UID)
	} else {
		defer s.inFlight.release(uid)
		if s.refusals.exhausted(uid) {
			err = s.tooManyRefusals(rq)
		}
	}
	if err != nil {
		if rerr := s.recordRefusal(ctx, rq, rt.pattern, rt.op, err); rerr != nil {
			return nil, rerr
		}
		return nil, err
	}
	if err := s.factorAtDoor(ctx, rq, rt); err != nil { // mfa.go
		return nil, err
	}
	body, err := rt.handle(ctx, rq)
	if st, ok := body.(streamer); ok && err == nil {
		// A streaming route writes its own answer (rewrap.go), while the
		// caller's in-flight slot is still held; it records each item.
		st.stream(ctx, w)
		return streamedResponse{}, nil
	}
	if !rq.recorded.Load() && rt.op != opHealth {
		// A route that recorded nothing (a reviewer's log read, a key
		// listing, a body that did not decode) is recorded here, before
		// its answer is released.
		e := auditlog.Entry{Operation: rt.op, Detail: r.Method + " " + r.URL.RequestURI()}
		if rerr := s.record(ctx, rq, e, err); rerr != nil {
			return nil, rerr
		}
	}
	return body, err
}

// opHealth is the one operation not recorded when allowed: health
// discloses nothing but the daemon's state, and monitors poll it.
const opHealth = "health"

// streamedResponse is what serve returns once a streaming route has
// written its answer itself.
type streamedResponse struct{}

func (s *Server) authorize(ctx context.Context, rq *request, rt route) error {
	p, err := peerFrom(rq.Context())
	if err != nil {
		return errorf(http.StatusForbidden, api.CodeUnknownCaller, "%v", err)
	}
	rq.peer = p
	pr, err := rq.policy.Identify(policy.Caller{UID: p.UID, GID: p.GID, PID: p.PID})
	if err != nil {
		return err
	}
	rq.principal = pr
	return rq.policy.Authorize(pr, rt.perm)
}

// tooManyRefusals is the refusal of a caller whose refusal bucket is empty.
func (s *Server) tooManyRefusals(rq *request) error {
	return errorf(http.StatusTooManyRequests, api.CodeTooManyRefusals, "uid %d was refused more than %d times recently (limits.refusal_burst, refilled at limits.refusal_rate %d/s); fix the failing requests and slow down", rq.peer.UID, s.d.Limits.RefusalBurst, s.d.Limits.RefusalRate)
}

// recordRefusal records err, a refusal at the door of route (its pattern,
// or "connect") for operation op, through the coalescer: identical ones
// within limits.refusal_window become one counted entry.
func (s *Server) recordRefusal(ctx context.Context, rq *request, route, op string, err error) error {
	e := s.complete(rq, auditlog.Entry{Operation: op}, err)
	s.charge(rq, err)
	if rerr := s.refused.record(ctx, refusalKey{uid: rq.peer.key(), route: route, code: e.Code}, e); rerr != nil {
		return s.logRefused(e, rerr)
	}
	return nil
}

// record is the one place where decisions are recorded (recordRefusal
// too, for refusals at the door). It completes e from the request and
// from err (nil = allowed; outcome says denied or failed), normalizes it
// (every string and list within its limit, clipped ones marked:
// auditlog.Normalize), counts a refusal against the caller, hands e to the
// Recorder and returns a log_unavailable error when that fails: the caller
// must then release nothing.
func (s *Server) record(ctx context.Context, rq *request, e auditlog.Entry, err error) error {
	return s.startRecord(ctx, rq, e, err)()
}

// startRecord is record in two steps: the entry is completed and handed to
// the Recorder now (queued for the next group commit when the Recorder is
// an auditlog.Starter, as the access log is; on a goroutine otherwise), and
// wait returns what record would once it is durable. The caller may work
// meanwhile and must not release anything before wait returned nil.
func (s *Server) startRecord(ctx context.Context, rq *request, e auditlog.Entry, err error) (wait func() error) {
	e = s.complete(rq, e, err)
	s.charge(rq, err)
	refused := func(rerr error) error {
		if rerr != nil {
			return s.logRefused(e, rerr)
		}
		return nil
	}
	if st, ok := s.d.Recorder.(auditlog.Starter); ok {
		w := st.Start(ctx, e)
		return func() error { return refused(w()) }
	}
	done := make(chan error, 1)
	go func() { done <- s.d.Recorder.Record(ctx, e) }()
	return func() error { return refused(<-done) }
}

// RecordDaemon records e, a decision the daemon took on its own (the due
// rotation pass: keys.Scheduler; cmd/custodyd's daemon.start, policy.reload,
// ceremony.officers_reload, daemon.stop), on the same path as record: completed
// from err (outcome and code), normalized, handed to the Recorder, a
// log_unavailable error when that fails. The caller is the daemon itself:
// principal "custodyd", its own uid, gid and pid. Nothing is charged.
func (s *Server) RecordDaemon(ctx context.Context, e auditlog.Entry, err error) error {
	e.Time = s.d.Now().UTC()
	e.Caller, e.Principal = s.self, "custodyd"
	e.Outcome, e.Code = outcome(err)
	e = auditlog.Normalize(e)
	if rerr := s.d.Recorder.Record(ctx, e); rerr != nil {
		return s.logRefused(e, rerr)
	}
	return nil
}

// DaemonFailure is err as a daemon event of cmd/custodyd records it
// through RecordDaemon: outcome failed, with the event's own code (such as
// invalid_policy for a policy reload that failed), which is not one of the
// API's error codes. Its message is err's.
func DaemonFailure(code string, err error) error {
	return &apiError{Status: http.StatusInternalServerError, Code: code, Message: err.Error()}
}

// charge counts a refusal the caller caused (a 4xx answer: denied, a bad
// request, over a limit) against its refusal bucket. Failures of the
// daemon's side (5xx: hsm_unavailable, log_unavailable, timeout, Vault…)
// are not the caller's doing and are not counted, nor is
// too_many_refusals itself (the bucket must refill).
func (s *Server) charge(rq *request, err error) {
	if err == nil {
		return
	}
	if ae := classify(err); ae.Status >= 400 && ae.Status < 500 && ae.Code != api.CodeTooManyRefusals {
		s.refusals.charge(rq.peer.key())
	}
}

func (s *Server) logRefused(e auditlog.Entry, err error) error {
	s.d.Log.Error("access log refused an entry; refusing the operation", "op", e.Operation, "err", err)
	return errorf(http.StatusServiceUnavailable, api.CodeLogUnavailable, "the access log cannot record this decision; nothing was released")
}

// complete fills e in from the request and from err (nil = allowed) and
// normalizes it.
func (s *Server) complete(rq *request, e auditlog.Entry, err error) auditlog.Entry {
	rq.recorded.Store(true)
	e.Time = s.d.Now().UTC()
	e.Caller = rq.peer.Caller
	e.Principal = rq.principal.Name
	e.EndUser = rq.endUser
	e.Outcome, e.Code = outcome(err)
	return auditlog.Normalize(e)
}

// clip bounds a caller's string that a handler puts into an entry's
// detail, marked when cut ("…[N bytes, clipped]"). Members of an entry
// need no clip: record normalizes them.
func clip(s string) string { return auditlog.ClipString(s, auditlog.MaxStringBytes) }

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(body)
}

func writeError(w http.ResponseWriter, e *apiError) {
	writeJSON(w, e.Status, api.ErrorBody{Error: e.wire()})
}

// decodeJSON reads a strict JSON body into v: unknown fields, trailing data
// and oversize bodies are errors with their own codes. A decrypt request in
// the plain form is decoded by decodeFast (fastjson.go), anything else by
// decodeStrict, whose answer is the contract.
func decodeJSON(r *http.Request, v any) error {
	body, err := readBody(r)
	if err != nil {
		return err
	}
	if decodeFast(body, v) {
		return nil
	}
	return decodeStrict(body, v)
}

// decodeStrict decodes body into v with encoding/json: unknown fields and
// data after the value are bad_request.
func decodeStrict(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errorf(http.StatusBadRequest, api.CodeBadRequest, "request body: %v", err)
	}
	if dec.More() {
		return errorf(http.StatusBadRequest, api.CodeBadRequest, "request body: trailing data after the JSON object")
	}
	return nil
}

// readBody reads the whole request body; past the server's limit
// (http.MaxBytesReader) it fails with body_too_large.
func readBody(r *http.Request) ([]byte, error) {
	n := r.ContentLength // a hint only: the limit is MaxBytesReader's
	if n < 0 || n > 64<<10 {
		n = 0
	}
	buf := bytes.NewBuffer(make([]byte, 0, n+bytes.MinRead)) // room for the read that sees EOF
	if _, err := buf.ReadFrom(r.Body); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, errorf(http.StatusRequestEntityTooLarge, api.CodeBodyTooLarge, "request body larger than %d bytes", mbe.Limit)
		}
		return nil, errorf(http.StatusBadRequest, api.CodeBadRequest, "request body: %v", err)
	}
	return buf.Bytes(), nil
}
