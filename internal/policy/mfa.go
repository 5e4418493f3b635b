package policy

import (
	"slices"
	"strings"
)

// secondFactor is the policy's "second_factor" section: which requests
// need a TOTP code (internal/mfa) besides the caller's Unix identity, for
// every principal and per principal (docs/policy.md, "Second factor"):
//
//	"second_factor": {
//	  "audit_decrypt": true,
//	  "decrypt_purposes": ["dispute"],
//	  "operations": ["ceremony.approve", "key.retire"],
//	  "principals": [
//	    {"principal": "night-ops", "operations": ["*"]},
//	    {"principal": "settlement-app", "decrypt_purposes": ["settlement"]}
//	  ]
//	}
//
// Requirements only add up: a request needs a factor when any entry that
// applies to it says so. Nothing exempts a principal from a requirement
// for every principal.
type secondFactor struct {
	ops      map[string]bool // operations (FactorOperations) for every principal; audit_decrypt adds "audit-decrypt"
	purposes map[string]bool // decrypt purposes for every principal
	by       map[string]*principalFactor
}

type principalFactor struct {
	ops      map[string]bool
	purposes map[string]bool
}

// FactorOperations are the operations a second factor can be required for:
// the access-log operation names of the server's routes (docs/api.md),
// all but health and the self-enrollment a principal needs to get a
// factor at all ("mfa.self-enroll"). "*" in a list means all of them.
var FactorOperations = []string{
	"register", "participant", "participant.status", "participant.status.set",
	"mfa.enroll", "mfa.revoke", "mfa.list", "mfa.confirm",
	"encrypt", "decrypt", "audit-decrypt", "rewrap", "inspect",
	"log.checkpoint", "log.entries", "log.proof",
	"keys", "key.rotate", "key.retire", "key.prove",
	"ceremony.status", "ceremony.request", "ceremony.show", "ceremony.approve", "ceremony.share", "ceremony.fetch",
	"ceremony.genesis", "ceremony.backup", "ceremony.restore", "ceremony.rotate", "ceremony.retire",
}

// FactorForAudit reports whether every principal's audit decrypts need a
// second factor.
func (p *Policy) FactorForAudit() bool {
	return p != nil && p.factor != nil && p.factor.ops["audit-decrypt"]
}

// FactorForDecrypt reports whether decrypting for purpose needs one, for
// every principal.
func (p *Policy) FactorForDecrypt(purpose string) bool {
	return p != nil && p.factor != nil && p.factor.purposes[purpose]
}

// NeedsFactor reports whether a request of principal pr for operation op
// (a route's operation name, FactorOperations) needs a second factor; for
// op "decrypt", purpose is the purpose asked for ("" when not known yet:
// then only the operation's own requirement counts). A nil policy or one
// without the section needs none.
func (p *Policy) NeedsFactor(pr Principal, op, purpose string) bool {
	if p == nil || p.factor == nil || !slices.Contains(FactorOperations, op) {
		return false
	}
	f := p.factor
	if f.ops[op] || (op == "decrypt" && f.purposes[purpose]) {
		return true
	}
	pf := f.by[pr.Name]
	return pf != nil && (pf.ops[op] || (op == "decrypt" && pf.purposes[purpose]))
}

// secondFactor parses the section. It runs after principals: a
// per-principal entry must name a principal of the file.
func (c *checker) secondFactor(root *node, p *Policy) {
	sec := root.field("second_factor")
	if sec == nil {
		return
	}
	const path = "second_factor"
	if !c.object(sec, path, "comment", "audit_decrypt", "decrypt_purposes", "operations", "principals") {
		return
	}
	c.str(sec, path, "comment", false)
	f := &secondFactor{ops: map[string]bool{}, purposes: map[string]bool{}, by: map[string]*principalFactor{}}
	if v := sec.field("audit_decrypt"); v != nil {
		if v.kind != kindBool {
			c.errf(path+".audit_decrypt", "must be a boolean, not %s", v.kind)
		}
		if v.text == "true" {
			f.ops["audit-decrypt"] = true
		}
	}
	c.factorPurposes(sec, path, p, f.purposes)
	c.factorOps(sec, path, f.ops)
	entries, _ := c.array(sec, path, "principals", false)
	for i, e := range entries {
		ep := joinIndex(joinKey(path, "principals"), i)
		if !c.object(e, ep, "principal", "comment", "operations", "decrypt_purposes") {
			continue
		}
		c.str(e, ep, "comment", false)
		name, ok := c.str(e, ep, "principal", true)
		if ok {
			if _, known := p.byName[name]; !known {
				c.errf(joinKey(ep, "principal"), "unknown principal %q", name)
				ok = false
			} else if _, dup := f.by[name]; dup {
				c.errf(joinKey(ep, "principal"), "principal %q has two entries; merge them", name)
				ok = false
			}
		}
		if e.field("operations") == nil && e.field("decrypt_purposes") == nil {
			c.errf(ep, "asks for nothing: give operations, decrypt_purposes or both")
		}
		pf := &principalFactor{ops: map[string]bool{}, purposes: map[string]bool{}}
		c.factorPurposes(e, ep, p, pf.purposes)
		c.factorOps(e, ep, pf.ops)
		if ok {
			f.by[name] = pf
		}
	}
	p.factor = f
}

func (c *checker) factorPurposes(obj *node, path string, p *Policy, into map[string]bool) {
	names, paths := c.strs(obj, path, "decrypt_purposes", false)
	for i, n := range names {
		if _, ok := p.purposes[n]; !ok {
			c.errf(paths[i], "unknown purpose %q", n)
			continue
		}
		into[n] = true
	}
}

func (c *checker) factorOps(obj *node, path string, into map[string]bool) {
	ops, paths := c.strs(obj, path, "operations", false)
	for i, op := range ops {
		switch {
		case op == "*":
			if len(ops) > 1 {
				c.errf(paths[i], `"*" (every operation) must be the only entry`)
			}
			for _, o := range FactorOperations {
				into[o] = true
			}
		case slices.Contains(FactorOperations, op):
			into[op] = true
		default:
			c.errf(paths[i], "unknown operation %q (known: *, %s)", op, strings.Join(FactorOperations, ", "))
		}
	}
}
