package server

import (
	"context"
	"errors"

	"custody/hsm"
	"custody/internal/api"
)

// health: GET /v1/health reports the token, its probed capabilities, the
// daemon keys and the policy. It pings the token, so it also tells whether
// the HSM is reachable right now.
func (s *Server) health(ctx context.Context, rq *request) (any, error) {
	caps := s.d.Token.Capabilities()
	out := api.Health{
		Status:       "ok",
		Version:      s.d.Version,
		Token:        api.Token(s.d.Token.Info()),
		Capabilities: api.Capabilities(caps),
		Policy:       rq.policy.Summary(),
		Principal:    rq.principal.Name,
		Profile:      caps.String(),
		TokenRescans: s.d.Keys.Rescans(),
	}
	out.ParticipantStatus = statusOff
	if s.d.Status != nil {
		out.ParticipantStatus = s.d.Status.Describe()
	}
	if err := s.d.Token.Ping(ctx); err != nil {
		out.Status = classify(err).Code
		if !errors.Is(err, hsm.ErrUnavailable) {
			s.d.Log.Warn("health: token ping failed", "err", err)
		}
	}
	if s.d.AccessLog != nil {
		st := s.d.AccessLog.Status()
		out.AccessLog = (*api.LogStatus)(&st)
		if !st.Writable && out.Status == "ok" {
			out.Status = api.CodeLogUnavailable
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
