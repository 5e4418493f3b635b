package main

import (
	"encoding/json"
	"fmt"
	"io"

	"custody/internal/api"
)

// audit implements `custodyctl audit decrypt`: an auditor opens an envelope
// through its escrow stanza under a court order that Vault holds.
func (c *cli) audit(args []string, stdin io.Reader, envFile, order, purpose *string) error {
	var body []byte
	if *envFile != "" || *order != "" {
		if *envFile == "" || *order == "" || *purpose == "" {
			return usageError{msg: "audit decrypt with flags needs --envelope-file, --order and --purpose"}
		}
		env, err := envelopeFromFile(*envFile)
		if err != nil {
			return err
		}
		body, _ = json.Marshal(api.AuditDecryptRequest{Envelope: env, Authorization: *order, Purpose: *purpose})
	} else {
		var err error
		if body, err = readInput(args, stdin); err != nil {
			return err
		}
	}
	return oneOrBatch(c, body, c.d.AuditDecrypt, c.d.AuditDecryptBatch, func(w io.Writer, r *api.AuditDecrypted) {
		fmt.Fprintf(w, "transaction %s (job %s), opened through the escrow stanza under order %s (version %d), use %d of %d\n",
			r.TransactionID, r.JobID, r.Order.ID, r.Order.Version, r.Order.Use, r.Order.MaxUses)
		printSealedBy(w, r.SealedBy)
		printFields(w, r.Confidential)
	})
}
