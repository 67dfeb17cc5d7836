#!/bin/sh
# Fetches the jars of a single-node Apache Kafka (broker + KRaft controller) that the test
# suite starts (tests/_kafka.py), with Maven, into a cache shared by every checkout:
#   ${CLEW_KAFKA_HOME:-${XDG_CACHE_HOME:-~/.cache}/clew/kafka/<version>}/libs/*.jar
# The version is the one in scripts/kafka/pom.xml. Does nothing when the jars are there.
# When it cannot (no Maven or Java, no network) it says why and exits 0, so the Kafka tests
# skip with the same hint; under CI=true it fails, so that CI never skips them silently.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
pom="$here/kafka/pom.xml"
version=$(sed -n 's:.*<kafka\.version>\(.*\)</kafka\.version>.*:\1:p' "$pom")
home=${CLEW_KAFKA_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/clew/kafka/$version}

if [ -f "$home/.complete" ]; then
    exit 0
fi

give_up() {
    echo "kafka.sh: $1" >&2
    if [ "${CI:-}" = "true" ]; then
        exit 1
    fi
    echo "kafka.sh: the Kafka tests will be skipped" >&2
    exit 0
}

if ! command -v mvn >/dev/null 2>&1 || ! command -v java >/dev/null 2>&1; then
    give_up "Maven and Java 17+ are needed to fetch Kafka $version: apt-get install maven openjdk-17-jdk-headless"
fi

echo "kafka.sh: fetching Apache Kafka $version into $home" >&2
rm -rf "$home.partial"
mkdir -p "$home.partial"
# Maven reports errors on stdout: keep its output, and show it only if it fails.
if ! mvn -q -B -Dstyle.color=never -f "$pom" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$home.partial/libs" >"$home.partial/mvn.log" 2>&1; then
    cat "$home.partial/mvn.log" >&2
    give_up "Maven could not fetch Kafka $version (see above)"
fi
rm -f "$home.partial/mvn.log"
rm -rf "$home"
mv "$home.partial" "$home"
touch "$home/.complete"
