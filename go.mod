module custody

go 1.26.8

require (
	github.com/miekg/pkcs11 v1.1.2
	golang.org/x/crypto v0.59.0
	golang.org/x/sys v0.50.0
)
