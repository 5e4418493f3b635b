package policy

// secondFactor is the policy's "second_factor" section: which operations
// need a TOTP code (internal/mfa) besides the caller's Unix identity.
//
//	"second_factor": {"audit_decrypt": true, "decrypt_purposes": ["dispute"]}
type secondFactor struct {
	audit    bool
	purposes map[string]bool
}

// FactorForAudit reports whether audit decrypts need a second factor.
func (p *Policy) FactorForAudit() bool { return p != nil && p.factor != nil && p.factor.audit }

// FactorForDecrypt reports whether decrypting for purpose needs one.
func (p *Policy) FactorForDecrypt(purpose string) bool {
	return p != nil && p.factor != nil && p.factor.purposes[purpose]
}

func (c *checker) secondFactor(root *node, p *Policy) {
	sec := root.field("second_factor")
	if sec == nil {
		return
	}
	const path = "second_factor"
	if !c.object(sec, path, "comment", "audit_decrypt", "decrypt_purposes") {
		return
	}
	c.str(sec, path, "comment", false)
	f := &secondFactor{purposes: map[string]bool{}}
	if v := sec.field("audit_decrypt"); v != nil {
		if v.kind != kindBool {
			c.errf(path+".audit_decrypt", "must be a boolean, not %s", v.kind)
		}
		f.audit = v.text == "true"
	}
	names, paths := c.strs(sec, path, "decrypt_purposes", false)
	for i, n := range names {
		if _, ok := p.purposes[n]; !ok {
			c.errf(paths[i], "unknown purpose %q", n)
			continue
		}
		f.purposes[n] = true
	}
	p.factor = f
}
