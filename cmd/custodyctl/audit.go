package main

import (
	"encoding/json"
	"fmt"
	"io"
)

// audit implements `custodyctl audit decrypt`: an auditor opens an envelope
// through its escrow stanza under a court order that Vault holds.
func (c *client) audit(args []string, stdin io.Reader, envFile, order, purpose *string) error {
	var body []byte
	if *envFile != "" || *order != "" {
		if *envFile == "" || *order == "" || *purpose == "" {
			return usageError{msg: "audit decrypt with flags needs --envelope-file, --order and --purpose"}
		}
		env, err := envelopeFromFile(*envFile)
		if err != nil {
			return err
		}
		body, _ = json.Marshal(map[string]string{"envelope": env, "authorization": *order, "purpose": *purpose})
	} else {
		var err error
		if body, err = readInput(args, stdin); err != nil {
			return err
		}
	}
	path := "/v1/audit/decrypt"
	if isBatch(body) {
		path += "/batch"
		c.json = true
	}
	var r struct {
		TransactionID string                     `json:"transaction_id"`
		JobID         string                     `json:"job_id"`
		Confidential  map[string]json.RawMessage `json:"confidential"`
		Order         struct {
			ID      string `json:"id"`
			Version int    `json:"version"`
			Use     int    `json:"use"`
			MaxUses int    `json:"max_uses"`
		} `json:"order"`
		SealedBy string `json:"sealed_by"`
	}
	raw, err := c.call("POST", path, body, &r)
	if err != nil || c.json {
		if err == nil {
			c.printJSON(raw)
		}
		return err
	}
	fmt.Fprintf(c.out, "transaction %s (job %s), opened through the escrow stanza under order %s (version %d), use %d of %d\n",
		r.TransactionID, r.JobID, r.Order.ID, r.Order.Version, r.Order.Use, r.Order.MaxUses)
	if r.SealedBy != "" {
		fmt.Fprintf(c.out, "sealed by %s\n", escapeText(r.SealedBy))
	}
	c.printFields(r.Confidential)
	return nil
}
