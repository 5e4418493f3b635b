package server

import (
	"context"
	"net/http"
	"regexp"
	"time"

	"custody/internal/api"
	"custody/internal/auditlog"
	"custody/internal/policy"
)

// MFA is the second factor (*mfa.Service in the daemon): Verify accepts a
// principal's code once (nil) or refuses with mfa.ErrInvalid, ErrReplay,
// ErrLocked, ErrNotEnrolled or ErrUnavailable; Enroll returns the
// otpauth:// URI of a new seed imported into the token; Revoke destroys it.
type MFA interface {
	Verify(ctx context.Context, principal, code string, now time.Time) error
	Enroll(ctx context.Context, principal string) (string, error)
	Revoke(ctx context.Context, principal string) error
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
		return errorf(http.StatusForbidden, api.CodeMFARequired, "this request needs a second factor: send your authenticator's current code in the %s header (custodyctl --totp prompts for it); an admin enrolls you with `custodyctl mfa enroll %s`", api.HeaderTOTP, rq.principal.Name)
	}
	if s.d.MFA == nil {
		return errorf(http.StatusServiceUnavailable, api.CodeMFAUnavailable, "the policy asks for a second factor but the daemon has no vault section to keep its state: refused")
	}
	return s.d.MFA.Verify(ctx, rq.principal.Name, code, s.d.Now())
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

// mfaRevoke: DELETE /v1/mfa/principals/{principal} (admin) destroys the seed.
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
