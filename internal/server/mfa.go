package server

import (
	"context"
	"crypto/subtle"
	"net/http"
	"regexp"
	"sync"
	"time"

	"custody/internal/api"
	"custody/internal/auditlog"
	"custody/internal/mfa"
	"custody/internal/policy"
)

// MFA is the second factor (*mfa.Service in the daemon): Verify accepts a
// principal's code once (nil) or refuses with mfa.ErrInvalid, ErrReplay,
// ErrLocked, ErrNotEnrolled or ErrUnavailable; Enroll (an admin's) returns
// the otpauth:// URI of a new seed imported into the token, usable at once;
// StartSelf (the principal's own) the URI and the id of a pending one that
// Confirm (by another admin) makes usable; List reports enrollments, never
// seeds; Revoke destroys a principal's keys. Enrolling a principal that has
// a factor is mfa.ErrEnrolled; revoking or confirming nothing,
// mfa.ErrNoEnrollment; confirming one's own, mfa.ErrSelfConfirm.
type MFA interface {
	Verify(ctx context.Context, principal, code string, now time.Time) error
	Enroll(ctx context.Context, principal string) (string, error)
	StartSelf(ctx context.Context, principal string) (uri, id string, err error)
	Confirm(ctx context.Context, by, principal, id string) error
	List(ctx context.Context) ([]mfa.Enrollment, error)
	Revoke(ctx context.Context, principal string) error
}

// factorAtDoor asks for the second factor where the policy requires one
// for the route's operation and the caller's principal (policy.NeedsFactor),
// before the handler runs: a refused factor reaches no key, spends no
// court-order use and records no approval. The refusal is the request's
// entry, under the route's operation. Decrypt purposes are checked by the
// decrypt handler, which knows the purpose (transactions.go).
func (s *Server) factorAtDoor(ctx context.Context, rq *request, rt route) error {
	if !rq.policy.NeedsFactor(rq.principal, rt.op, "") {
		return nil
	}
	err := s.requireFactor(ctx, rq)
	if err == nil {
		return nil
	}
	if rerr := s.record(ctx, rq, auditlog.Entry{Operation: rt.op, Detail: "second factor refused"}, err); rerr != nil {
		return rerr
	}
	return err
}

// requireFactor verifies the request's Custody-TOTP code for its
// principal, once per request (a batch shares it: each code is accepted
// once). Called only where the policy asks for a factor.
func (s *Server) requireFactor(ctx context.Context, rq *request) error {
	rq.factorOnce.Do(func() { rq.factorErr = s.checkFactor(ctx, rq) })
	return rq.factorErr
}

func (s *Server) checkFactor(ctx context.Context, rq *request) error {
	code := rq.Header.Get(api.HeaderTOTP)
	if code == "" {
		return errorf(http.StatusForbidden, api.CodeMFARequired, "this request needs a second factor: send your authenticator's current code in the %s header (custodyctl --totp prompts for it); without a factor, enroll with `custodyctl mfa enroll --self` and have an admin confirm it", api.HeaderTOTP)
	}
	if s.d.MFA == nil {
		return errorf(http.StatusServiceUnavailable, api.CodeMFAUnavailable, "the policy asks for a second factor but the daemon has no vault section to keep its state: refused")
	}
	now := s.d.Now()
	cf, _ := rq.Context().Value(connFactorKey{}).(*connFactor)
	if cf.holds(rq.principal.Name, code, now) {
		return nil
	}
	if err := s.d.MFA.Verify(ctx, rq.principal.Name, code, now); err != nil {
		return err
	}
	cf.accepted(rq.principal.Name, code, now)
	return nil
}

// connFactor is one connection's record of the code last accepted on it,
// so that the several requests of one command (custodyctl ceremony
// approve reads the request, then approves it) pass with the one code the
// user typed: a code is accepted once, then holds on that connection
// alone, for the same principal and the same code, for connFactorTTL.
// Every other connection must present a fresh code (a replay there is
// mfa_invalid). Within those seconds, a lock set by later wrong codes
// elsewhere does not stop that connection. Safe for concurrent use; nil
// (a request served without the socket) holds nothing.
type connFactor struct {
	mu        sync.Mutex
	principal string
	code      string
	until     time.Time
}

type connFactorKey struct{}

// connFactorTTL bounds how long an accepted code holds on its connection:
// about the code's own life (30 s steps, ±1 step of skew).
const connFactorTTL = time.Minute

func (c *connFactor) holds(principal, code string, now time.Time) bool {
	if c == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.principal == principal && now.Before(c.until) &&
		subtle.ConstantTimeCompare([]byte(c.code), []byte(code)) == 1
}

func (c *connFactor) accepted(principal, code string, now time.Time) {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.principal, c.code, c.until = principal, code, now.Add(connFactorTTL)
	c.mu.Unlock()
}

var principalRe = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,63}$`)

func (s *Server) mfaService() (MFA, error) {
	if s.d.MFA == nil {
		return nil, errorf(http.StatusServiceUnavailable, api.CodeMFAUnavailable, "second factors are not configured: the daemon has no vault section")
	}
	return s.d.MFA, nil
}

// checkPrincipal: a principal name the current policy defines.
func checkPrincipal(p *policy.Policy, name string) error {
	if !principalRe.MatchString(name) {
		return badRequest("principal: %q is not a principal name", name)
	}
	if err := p.Authorize(policy.Principal{Name: name}, policy.PermHealth); err != nil {
		return badRequest("principal: %q is not in the current policy", name)
	}
	return nil
}

// mfaEnroll: POST /v1/mfa/principals {"principal"} (admin) creates the
// principal's seed on the token and answers its otpauth:// URI, once. The
// entry names the principal, never the URI.
func (s *Server) mfaEnroll(ctx context.Context, rq *request) (any, error) {
	var in api.MFAEnroll
	if err := decodeJSON(rq.Request, &in); err != nil {
		return nil, err
	}
	entry := auditlog.Entry{Operation: "mfa.enroll", Detail: "principal " + clip(in.Principal)}
	uri, err := s.enroll(ctx, rq, in.Principal)
	if rerr := s.record(ctx, rq, entry, err); rerr != nil {
		return nil, rerr
	}
	if err != nil {
		return nil, err
	}
	return api.MFAEnrolled{Principal: in.Principal, URI: uri}, nil
}

func (s *Server) enroll(ctx context.Context, rq *request, principal string) (string, error) {
	if err := checkPrincipal(rq.policy, principal); err != nil {
		return "", err
	}
	m, err := s.mfaService()
	if err != nil {
		return "", err
	}
	return m.Enroll(ctx, principal)
}

// mfaSelfEnroll: POST /v1/mfa/self (every known principal) starts the
// caller's own enrollment: a pending seed key on the token, its URI
// answered once with the enrollment's id. It satisfies no requirement
// until another admin confirms it (mfaConfirm). The entry names the
// principal and the id, never the URI.
func (s *Server) mfaSelfEnroll(ctx context.Context, rq *request) (any, error) {
	if rq.ContentLength != 0 { // no body, or {}
		var in struct{}
		if err := decodeJSON(rq.Request, &in); err != nil {
			return nil, err
		}
	}
	name := rq.principal.Name
	var uri, id string
	m, err := s.mfaService()
	if err == nil {
		uri, id, err = m.StartSelf(ctx, name)
	}
	detail := "principal " + name + " pending"
	if id != "" {
		detail += " enrollment " + id
	}
	if rerr := s.record(ctx, rq, auditlog.Entry{Operation: "mfa.self-enroll", Detail: detail}, err); rerr != nil {
		return nil, rerr
	}
	if err != nil {
		return nil, err
	}
	return api.MFAEnrolled{Principal: name, URI: uri, Enrollment: id, Pending: true}, nil
}

// mfaConfirm: POST /v1/mfa/principals/{principal}/confirm {"enrollment"}
// (admin, not the principal itself) makes a pending enrollment the
// principal's factor.
func (s *Server) mfaConfirm(ctx context.Context, rq *request) (any, error) {
	name := rq.PathValue("principal")
	var in api.MFAConfirm
	err := decodeJSON(rq.Request, &in)
	detail := "principal " + clip(name) + " enrollment " + clip(in.Enrollment)
	if err == nil {
		err = checkPrincipal(rq.policy, name)
	}
	if err == nil {
		var m MFA
		if m, err = s.mfaService(); err == nil {
			err = m.Confirm(ctx, rq.principal.Name, name, in.Enrollment)
		}
	}
	if rerr := s.record(ctx, rq, auditlog.Entry{Operation: "mfa.confirm", Detail: detail}, err); rerr != nil {
		return nil, rerr
	}
	if err != nil {
		return nil, err
	}
	return api.MFAConfirmed{Principal: name, Enrollment: in.Enrollment, ConfirmedBy: rq.principal.Name}, nil
}

// mfaList: GET /v1/mfa/principals (admin): who is enrolled, active or
// pending, from the token's labels; never a seed.
func (s *Server) mfaList(ctx context.Context, rq *request) (any, error) {
	m, err := s.mfaService()
	if err != nil {
		return nil, err
	}
	es, err := m.List(ctx)
	if err != nil {
		return nil, err
	}
	out := api.MFAList{Enrollments: []api.MFAEnrollment{}}
	for _, e := range es {
		st := "active"
		if e.Pending {
			st = "pending"
		}
		out.Enrollments = append(out.Enrollments, api.MFAEnrollment{Principal: e.Principal, State: st, Enrollment: e.ID})
	}
	return out, nil
}

// mfaRevoke: DELETE /v1/mfa/principals/{principal} (admin) destroys the
// principal's seed keys, active and pending.
func (s *Server) mfaRevoke(ctx context.Context, rq *request) (any, error) {
	name := rq.PathValue("principal")
	entry := auditlog.Entry{Operation: "mfa.revoke", Detail: "principal " + clip(name)}
	err := func() error {
		if !principalRe.MatchString(name) {
			return badRequest("principal: %q is not a principal name", name)
		}
		m, err := s.mfaService()
		if err != nil {
			return err
		}
		return m.Revoke(ctx, name)
	}()
	if rerr := s.record(ctx, rq, entry, err); rerr != nil {
		return nil, rerr
	}
	if err != nil {
		return nil, err
	}
	return map[string]any{"principal": name, "revoked": true}, nil
}
