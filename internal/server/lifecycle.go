package server

// Key lifecycle routes: key list, rotate, retire, proof of possession.
// Rewrap is rewrap.go (package rewrap does the work); the daemon's own
// due-rotation pass is keys.Scheduler, recorded through RecordDaemon.
//
// Proof of possession runs on the device through Deps.Prover.

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"time"

	"custody/internal/api"
	"custody/internal/auditlog"
	"custody/internal/device"
	"custody/internal/envelope"
	"custody/internal/keys"
	"custody/internal/pop"
)

// Prover is what proof of possession needs of the device
// (hsm.Token.ProvePossession).
type Prover interface {
	ProvePossession(ctx context.Context, req device.PossessionRequest) ([]byte, error)
}

// --- keys ---

func viewKey(k keys.KeyStatus) api.Key {
	out := api.Key{Kind: k.Kind, ID: k.ID, Active: k.Active, DueAt: k.DueAt, Due: k.Due, NeedsRewrap: k.Rewrap}
	for _, v := range k.Versions {
		vv := api.KeyVersionInfo{Version: v.Number, State: string(v.State), Created: v.Created, AgeDays: int(v.Age / (24 * time.Hour)),
			RotateAfter: v.RotateAfter, Destroyed: v.Destroyed}
		if v.Public != nil {
			vv.Algorithm, vv.SHA256 = v.Alg.String(), v.Fingerprint()
		}
		out.Versions = append(out.Versions, vv)
	}
	return out
}

// listKeys: GET /v1/keys.
func (s *Server) listKeys(ctx context.Context, rq *request) (any, error) {
	out := api.Keys{RotateAfter: s.d.Keys.RotateAfter().String(), Keys: []api.Key{}}
	for _, k := range s.d.Keys.List(s.d.Now()) {
		out.Keys = append(out.Keys, viewKey(k))
	}
	return out, nil
}

func pathID(rq *request) (string, error) {
	id := rq.PathValue("id")
	if err := envelope.ValidateID(id); err != nil {
		return "", errorf(http.StatusBadRequest, api.CodeInvalidID, "id: %v", err)
	}
	return id, nil
}

// rotateKey: POST /v1/keys/{id}/rotate.
func (s *Server) rotateKey(ctx context.Context, rq *request) (any, error) {
	id, err := pathID(rq)
	entry := auditlog.Entry{Operation: "key.rotate", Participant: rq.PathValue("id")}
	var v keys.Version
	if err == nil {
		v, err = s.d.Keys.Rotate(ctx, id, s.d.Now())
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
	st, err := s.d.Keys.Status(id, s.d.Now())
	if err != nil {
		return nil, err
	}
	return viewKey(st), nil
}

// retireKey: POST /v1/keys/{id}/retire {"version","confirm_rewrapped":true,"rewrapped_count":N}.
// The operator attests that every envelope was rewrapped (the count is the
// last rewrap run's); both are recorded. The version is then destroyed.
func (s *Server) retireKey(ctx context.Context, rq *request) (any, error) {
	var in api.RetireRequest
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
		err = errorf(http.StatusBadRequest, api.CodeRetireUnconfirmed, "retiring destroys the key version for good: confirm with \"confirm_rewrapped\":true and the \"rewrapped_count\" of your last rewrap run")
	default:
		entry.Detail = fmt.Sprintf("operator confirmed all envelopes rewrapped; last rewrap run: %d envelopes", *in.RewrappedCount)
		var v keys.Version
		v, err = s.d.Keys.Retire(ctx, id, false, in.Version, s.d.Now(), rq.principal.Name)
		entry.KeyLabel = v.Label
	}
	if rerr := s.record(ctx, rq, entry, err); rerr != nil {
		return nil, rerr
	}
	if err != nil {
		return nil, err
	}
	st, err := s.d.Keys.Status(id, s.d.Now())
	if err != nil {
		return nil, err
	}
	return viewKey(st), nil
}

// proveKey: POST /v1/keys/{id}/prove {"ephemeral_public","nonce","version"}:
// proof of possession (package pop).
func (s *Server) proveKey(ctx context.Context, rq *request) (any, error) {
	var in api.ProveRequest
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

func (s *Server) prove(ctx context.Context, rq *request, in api.ProveRequest, entry *auditlog.Entry) (*api.Proof, error) {
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
		v, err = s.d.Keys.Active(id)
	} else {
		v, err = s.d.Keys.ParticipantVersion(id, in.Version)
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
	mac, err := s.d.Prover.ProvePossession(ctx, device.PossessionRequest{KeyLabel: v.Label, Alg: v.Alg, VerifierPublic: eph,
		Context: pop.Context(v.Alg, eph, v.Public, nonce), Message: pop.Message(nonce)})
	if err != nil {
		return nil, err
	}
	return &api.Proof{ID: id, Version: v.Number, Algorithm: v.Alg.String(),
		PublicKey: base64.StdEncoding.EncodeToString(v.Public), MAC: base64.StdEncoding.EncodeToString(mac)}, nil
}
