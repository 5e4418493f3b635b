package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// envelopeInspect: custodyctl envelope inspect [FILE|-]. FILE (or stdin)
// holds the envelope text or encrypt's JSON output. Nothing is decrypted.
func (c *cli) envelopeInspect(args []string, stdin io.Reader) error {
	var env string
	if len(args) == 1 && args[0] != "-" {
		e, err := envelopeFromFile(args[0])
		if err != nil {
			return err
		}
		env = e
	} else {
		raw, err := readInput(args, stdin)
		if err != nil {
			return err
		}
		env = envelopeFromBytes(raw)
	}
	ctx, cancel := c.ctx()
	defer cancel()
	r, err := c.d.Inspect(ctx, env)
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(r)
	}
	w := c.out
	fmt.Fprintf(w, "envelope v%d, transaction %s (job %s), created %s\n", r.Version, escapeText(r.TransactionID), escapeText(r.JobID), r.CreatedAt.UTC().Format("2006-01-02T15:04:05.000Z"))
	sealedBy := "(not recorded: envelope v1)"
	if r.SealedBy != "" {
		sealedBy = escapeText(r.SealedBy)
	}
	fmt.Fprintf(w, "sealed by:     %s\n", sealedBy)
	sig := "valid"
	if !r.SignatureValid {
		sig = "DOES NOT VERIFY (" + escapeText(r.SignatureError) + "): do not trust anything above or below"
	}
	fmt.Fprintf(w, "signed by:     %s, signature %s\n", escapeText(r.SigningKeyID), sig)
	var ps []string
	for _, p := range r.Participants {
		ps = append(ps, fmt.Sprintf("%s (key v%d, %s)", escapeText(p.ID), p.KeyVersion, escapeText(p.Algorithm)))
	}
	fmt.Fprintf(w, "participants:  %s\n", strings.Join(ps, ", "))
	fmt.Fprintf(w, "escrow:        key v%d\n", r.EscrowKeyVersion)
	fmt.Fprintf(w, "public data:   %s\n", escapeJSON(r.PublicData))
	if r.Version == 1 {
		fmt.Fprintf(w, "payload:       %d bytes (v1: one payload, field names not recorded)\n", r.PayloadSize)
		return nil
	}
	fmt.Fprintf(w, "fields:        %d (names are not secret; values are)\n", len(r.Fields))
	for _, f := range r.Fields {
		fmt.Fprintf(w, "  %s: %d bytes\n", escapeText(f.Name), f.Size)
	}
	return nil
}

// envelopeFromBytes is envelopeFromFile for data already read.
func envelopeFromBytes(data []byte) string {
	var obj struct {
		Envelope string `json:"envelope"`
	}
	if json.Unmarshal(data, &obj) == nil && obj.Envelope != "" {
		return obj.Envelope
	}
	return strings.TrimSpace(string(data))
}
