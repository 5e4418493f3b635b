package server

import (
	"context"
	"encoding/base64"
	"net/http"

	"custody/internal/api"
	"custody/internal/auditlog"
	"custody/internal/envelope"
	"custody/internal/keys"
)

func viewVersion(v keys.Version) api.KeyVersion {
	return api.KeyVersion{Version: v.Number, Algorithm: v.Alg.String(), PublicKey: base64.StdEncoding.EncodeToString(v.Public), SHA256: v.Fingerprint(), Created: v.Created}
}

// registerParticipant: POST /v1/participants {"id"} creates the participant's
// first X25519 key pair on the token.
func (s *Server) registerParticipant(ctx context.Context, rq *request) (any, error) {
	var in api.RegisterRequest
	if err := decodeJSON(rq.Request, &in); err != nil {
		return nil, err
	}
	entry := auditlog.Entry{Operation: "register", Participant: in.ID}
	v, err := s.register(ctx, in.ID)
	if err == nil {
		entry.KeyLabel, entry.KeyVersion = v.Label, int(v.Number)
	}
	if rerr := s.record(ctx, rq, entry, err); rerr != nil {
		return nil, rerr
	}
	if err != nil {
		return nil, err
	}
	return api.Registered{ID: in.ID, KeyVersion: viewVersion(v)}, nil
}

func (s *Server) register(ctx context.Context, id string) (keys.Version, error) {
	if err := envelope.ValidateID(id); err != nil {
		return keys.Version{}, errorf(http.StatusBadRequest, api.CodeInvalidID, "id: %v", err)
	}
	return s.d.Keys.Register(ctx, id, s.d.Now())
}

// showParticipant: GET /v1/participants/{id} lists the key versions.
func (s *Server) showParticipant(ctx context.Context, rq *request) (any, error) {
	id := rq.PathValue("id")
	if err := envelope.ValidateID(id); err != nil {
		return nil, errorf(http.StatusBadRequest, api.CodeInvalidID, "id: %v", err)
	}
	vs, err := s.d.Keys.Participant(id)
	if err != nil {
		return nil, err
	}
	out := api.Participant{ID: id, Active: vs[len(vs)-1].Number}
	for _, v := range vs {
		out.Versions = append(out.Versions, viewVersion(v))
	}
	return out, nil
}
