package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"custody/internal/api"
	"custody/internal/client"
)

// confidential is the ~300-byte object both systems seal.
var confidential = json.RawMessage(`{"amount":"1000.00","currency":"USD","pricing":{"per_gpu_hour":"2.50","hours":"400","discount":"0.05"},"settlement_details":{"iban":"DE89 3704 0044 0532 0130 00","bic":"COBADEFFXXX","reference":"job-123: settlement for GPU compute, November, invoice INV-2026-1187, escrow account 4471-0093"}}`)

// benchParticipants are sealed for (3 participants + the escrow stanza);
// the first-run policy lets root act as client-* and miner-*.
var benchParticipants = []string{"client-bench-1", "client-bench-2", "miner-bench-3"}

// custody is custodyd over its socket, as an application host calls it.
type custody struct {
	c          *client.Client
	cold, warm []string // envelopes
}

func newCustody(socket string) (*custody, error) {
	c := client.New(socket)
	ctx := context.Background()
	if _, err := c.Health(ctx); err != nil {
		return nil, err
	}
	for _, p := range benchParticipants {
		if _, err := c.Register(ctx, p); err != nil && !api.IsCode(err, api.CodeParticipantExists) {
			return nil, err
		}
	}
	return &custody{c: c}, nil
}

func (*custody) name() string { return "custody" }

func encryptRequest(i int) api.EncryptRequest {
	id := fmt.Sprintf("bench-%d", i)
	return api.EncryptRequest{TransactionID: id, JobID: id, Confidential: confidential, Participants: benchParticipants}
}

func (t *custody) prepare(ctx context.Context, n int, progress io.Writer) error {
	seal := func(n, offset int) ([]string, error) {
		var out []string
		for len(out) < n {
			items := make([]api.EncryptRequest, min(1000, n-len(out)))
			for k := range items {
				items[k] = encryptRequest(offset + len(out) + k)
			}
			res, err := t.c.EncryptBatch(ctx, items)
			if err != nil {
				return nil, err
			}
			for _, r := range res {
				if r.Error != nil {
					return nil, r.Error
				}
				out = append(out, r.Result.Envelope)
			}
			fmt.Fprintf(progress, "\r  %d/%d", len(out), n)
		}
		fmt.Fprintln(progress)
		return out, nil
	}
	var err error
	if t.cold, err = seal(n, 0); err != nil {
		return err
	}
	t.warm, err = seal(warmSet, n)
	return err
}

func decryptRequest(env string) api.DecryptRequest {
	return api.DecryptRequest{Envelope: env, As: benchParticipants[0], Purpose: "dispute"}
}

func (t *custody) do(ctx context.Context, op string, i int) (int, error) {
	switch op {
	case "decrypt-cold", "decrypt-warm":
		env := t.warm[i%len(t.warm)]
		if op == "decrypt-cold" {
			env = t.cold[i%len(t.cold)]
		}
		_, err := t.c.Decrypt(ctx, decryptRequest(env))
		return 1, err
	case "encrypt":
		_, err := t.c.Encrypt(ctx, encryptRequest(i))
		return 1, err
	case "batch-decrypt-cold", "batch-decrypt-warm":
		items := make([]api.DecryptRequest, batchSize)
		for k := range items {
			if op == "batch-decrypt-cold" {
				items[k] = decryptRequest(t.cold[(i+k)%len(t.cold)])
			} else {
				items[k] = decryptRequest(t.warm[k%len(t.warm)])
			}
		}
		res, err := t.c.DecryptBatch(ctx, items)
		return batchSize, firstError(res, err)
	case "batch-encrypt":
		items := make([]api.EncryptRequest, batchSize)
		for k := range items {
			items[k] = encryptRequest(i + k)
		}
		res, err := t.c.EncryptBatch(ctx, items)
		return batchSize, firstError(res, err)
	}
	return 0, fmt.Errorf("unknown operation %q", op)
}

func firstError[R any](res []api.BatchResult[R], err error) error {
	if err != nil {
		return err
	}
	for _, r := range res {
		if r.Error != nil {
			return r.Error
		}
	}
	return nil
}
