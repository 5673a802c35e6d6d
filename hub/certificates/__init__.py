"""The certificate library's service (电子证照库): publishing and status changes by issuers."""
