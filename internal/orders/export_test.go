package orders

// SetAddress points a checker at another address, keeping its token: the
// slow-Vault test moves an authenticated checker to a silent listener.
func SetAddress(c *Checker, addr string) error { return c.client.SetAddress(addr) }
