package server

import (
	"context"
	"errors"

	"custody/hsm"
	"custody/internal/auditlog"
)

type healthResponse struct {
	Status       string           `json:"status"` // "ok", or the error code of what is wrong
	Version      string           `json:"version,omitempty"`
	Token        hsm.TokenInfo    `json:"token"`
	Capabilities hsm.Capabilities `json:"capabilities"`
	Profile      string           `json:"capability_summary"`
	EscrowKey    string           `json:"escrow_key,omitempty"`
	SigningKey   string           `json:"signing_key,omitempty"`
	Policy       string           `json:"policy"`
	Principal    string           `json:"you"`
	AccessLog    *auditlog.Status `json:"access_log,omitempty"`
	// TokenRescans counts the registry's rereads of the token since start
	// (periodic, and after lookup misses; bounded: docs/fleet.md).
	TokenRescans uint64 `json:"token_rescans"`
}

// health: GET /v1/health reports the token, its probed capabilities, the
// daemon keys and the policy. It pings the token, so it also tells whether
// the HSM is reachable right now.
func (s *Server) health(ctx context.Context, rq *request) (any, error) {
	out := healthResponse{
		Status:       "ok",
		Version:      s.d.Version,
		Token:        s.d.Token.Info(),
		Capabilities: s.d.Token.Capabilities(),
		Policy:       rq.policy.Summary(),
		Principal:    rq.principal.Name,
		TokenRescans: s.d.Keys.Rescans(),
	}
	out.Profile = out.Capabilities.String()
	if err := s.d.Token.Ping(ctx); err != nil {
		out.Status = classify(err).Code
		if !errors.Is(err, hsm.ErrUnavailable) {
			s.d.Log.Warn("health: token ping failed", "err", err)
		}
	}
	if s.d.AccessLog != nil {
		st := s.d.AccessLog.Status()
		out.AccessLog = &st
		if !st.Writable && out.Status == "ok" {
			out.Status = CodeLogUnavailable
		}
	}
	if v, err := s.d.Keys.Escrow(); err == nil {
		out.EscrowKey = v.Label + " sha256:" + v.Fingerprint()
	}
	if sg, err := s.d.Keys.Signer(); err == nil {
		out.SigningKey = sg.Label()
	}
	return out, nil
}
