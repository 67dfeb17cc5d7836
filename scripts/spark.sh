#!/bin/sh
# Fetches the jars the Spark engine of `clew rebuild` hands to Spark, with Maven, into a cache
# shared by every checkout:
#   ${CLEW_SPARK_JARS:-${XDG_CACHE_HOME:-~/.cache}/clew/spark/<delta version>/jars}/*.jar
# Delta Lake's Spark connector (delta-spark, delta-storage), and Hadoop's S3A connector
# (hadoop-aws) with the AWS SDK modules it needs for a lake on S3: 32 jars, 16.5 MB.
# The versions are the ones in scripts/spark/pom.xml. Does nothing when the jars are there.
# Spark itself comes with pyspark (pip install -e '.[spark]', or the dev extra).
# When it cannot (no Maven or Java, no network) it says why and exits 0, so the Spark tests
# skip with the same hint; under CI=true it fails, so that CI never skips them silently.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
pom="$here/spark/pom.xml"
version=$(sed -n 's:.*<delta\.version>\(.*\)</delta\.version>.*:\1:p' "$pom")
hadoop=$(sed -n 's:.*<hadoop\.version>\(.*\)</hadoop\.version>.*:\1:p' "$pom")
jars=${CLEW_SPARK_JARS:-${XDG_CACHE_HOME:-$HOME/.cache}/clew/spark/$version/jars}

if [ -f "$jars/delta-spark_2.13-$version.jar" ] && [ -f "$jars/delta-storage-$version.jar" ] &&
    [ -f "$jars/hadoop-aws-$hadoop.jar" ]; then
    exit 0
fi

give_up() {
    echo "spark.sh: $1" >&2
    if [ "${CI:-}" = "true" ]; then
        exit 1
    fi
    echo "spark.sh: the Spark tests will be skipped" >&2
    exit 0
}

if ! command -v mvn >/dev/null 2>&1 || ! command -v java >/dev/null 2>&1; then
    give_up "Maven and Java 17+ are needed to fetch Delta Lake $version for Spark: apt-get install maven openjdk-17-jdk-headless"
fi

echo "spark.sh: fetching Delta Lake $version and Hadoop $hadoop S3A for Spark into $jars" >&2
rm -rf "$jars.partial"
mkdir -p "$jars.partial"
# Spark's own jars (Hadoop, Scala, ANTLR, Netty) come with pyspark: the pom copies only the
# groups pyspark lacks. Maven reports errors on stdout: keep its output, show it on failure.
if ! mvn -q -B -Dstyle.color=never -f "$pom" dependency:copy-dependencies \
    -DoutputDirectory="$jars.partial" >"$jars.partial.log" 2>&1; then
    cat "$jars.partial.log" >&2
    rm -f "$jars.partial.log"
    give_up "Maven could not fetch Delta Lake $version (see above)"
fi
rm -f "$jars.partial.log"
rm -rf "$jars"
mv "$jars.partial" "$jars"
