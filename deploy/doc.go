// Package deploy holds cachesync's operational artefacts and their tests:
// the Prometheus alert rules and their unit tests (prometheus/), the
// Prometheus configuration of docker-compose.yml, and the Grafana dashboard
// with its provisioning files (grafana/). It has no Go code to import.
//
// go test ./deploy runs promtool on the rules, checks that every metric and
// label the rules and the dashboard name is one the daemon registers, and
// starts a real Prometheus scraping a real daemon to see the readiness
// alert fire when Redis stops.
package deploy
