/*
 * The example site's analytics. It loads the browser SDK chosen (analytics.js, or
 * RudderStack's JavaScript SDK v3) from Clew, and sends every event through `site`, one small
 * facade whose calls are the same for both SDKs.
 *
 * Configuration, first found wins: the query string (?sdk=segment|rudderstack, ?api=URL,
 * ?writeKey=KEY; the SDK chosen is remembered), then window.CLEW_EXAMPLE from config.js
 * (written by `clew examples web`).
 */
(function () {
  "use strict";

  var config = window.CLEW_EXAMPLE || {};
  var query = new URLSearchParams(location.search);
  var api = (query.get("api") || config.api || "http://127.0.0.1:8088").replace(/\/+$/, "");
  var writeKey = query.get("writeKey") || config.writeKey;
  var sdk = query.get("sdk") || localStorage.getItem("clew_example_sdk") || config.sdk || "segment";
  localStorage.setItem("clew_example_sdk", sdk);

  var PRODUCTS = {
    "p-1": { name: "Ridgeline Trail Runner", category: "Shoes", price: 89.0 },
    "p-2": { name: "Summit 30L Pack", category: "Packs", price: 129.0 },
    "p-3": { name: "Alpine Down Jacket", category: "Jackets", price: 219.0 },
  };

  // Consent: the visitor's choice per category, sent on every event as Segment's consent
  // object (context.consent.categoryPreferences); Clew keeps the latest on the profile.
  var CONSENT = "clew_example_consent";
  function consent() {
    try {
      return JSON.parse(localStorage.getItem(CONSENT));
    } catch (e) {
      return null;
    }
  }
  function options() {
    var prefs = consent();
    return prefs ? { context: { consent: { categoryPreferences: prefs } } } : {};
  }

  function segment() {
    // Segment's standard snippet (5.2.0). Two changes: the script's host is Clew's, and
    // analytics._cdn names Clew, so analytics.js fetches its settings and chunks from Clew
    // (it reads the host from the script tag only for https pages).
    !function(){var i="analytics",analytics=window[i]=window[i]||[];if(!analytics.initialize)if(analytics.invoked)window.console&&console.error&&console.error("Segment snippet included twice.");else{analytics.invoked=!0;analytics.methods=["trackSubmit","trackClick","trackLink","trackForm","pageview","identify","reset","group","track","ready","alias","debug","page","screen","once","off","on","addSourceMiddleware","addIntegrationMiddleware","setAnonymousId","addDestinationMiddleware","register"];analytics.factory=function(e){return function(){if(window[i].initialized)return window[i][e].apply(window[i],arguments);var n=Array.prototype.slice.call(arguments);if(["track","screen","alias","group","page","identify"].indexOf(e)>-1){var c=document.querySelector("link[rel='canonical']");n.push({__t:"bpc",c:c&&c.getAttribute("href")||void 0,p:location.pathname,u:location.href,s:location.search,t:document.title,r:document.referrer})}n.unshift(e);analytics.push(n);return analytics}};for(var n=0;n<analytics.methods.length;n++){var key=analytics.methods[n];analytics[key]=analytics.factory(key)}analytics.load=function(key,n){var t=document.createElement("script");t.type="text/javascript";t.async=!0;t.setAttribute("data-global-segment-analytics-key",i);t.src=api+"/analytics.js/v1/" + key + "/analytics.min.js";var r=document.getElementsByTagName("script")[0];r.parentNode.insertBefore(t,r);analytics._loadOptions=n};analytics._writeKey=writeKey;analytics._cdn=api;analytics.SNIPPET_VERSION="5.2.0";
    analytics.load(writeKey);
    }}();
    var analytics = window.analytics;
    return {
      name: "analytics.js",
      page: function (category, name, props) {
        analytics.page(category, name, props || {}, options());
      },
      track: function (event, props) {
        analytics.track(event, props || {}, options());
      },
      identify: function (userId, traits) {
        analytics.identify(userId, traits, options());
      },
      anonymousId: function () {
        return new Promise(function (resolve) {
          analytics.ready(function () {
            resolve(window.analytics.user().anonymousId());
          });
        });
      },
    };
  }

  function rudderstack() {
    // RudderStack's npm build for a script tag defines rudderanalytics.RudderAnalytics; the
    // page creates the instance and loads it with Clew as data plane and config URL.
    var loaded = new Promise(function (resolve, reject) {
      var script = document.createElement("script");
      script.src = api + "/v3/modern/rsa.umd.js";
      script.onload = function () {
        var rudderanalytics = new window.rudderanalytics.RudderAnalytics();
        rudderanalytics.load(writeKey, api, { configUrl: api });
        resolve(rudderanalytics);
      };
      script.onerror = reject;
      document.head.appendChild(script);
    });
    return {
      name: "RudderStack JS SDK v3",
      page: function (category, name, props) {
        loaded.then(function (ra) {
          ra.page(category, name, props || {}, options());
        });
      },
      track: function (event, props) {
        loaded.then(function (ra) {
          ra.track(event, props || {}, options());
        });
      },
      identify: function (userId, traits) {
        loaded.then(function (ra) {
          ra.identify(userId, traits, options());
        });
      },
      anonymousId: function () {
        return loaded.then(function (ra) {
          return new Promise(function (resolve) {
            ra.ready(function () {
              resolve(ra.getAnonymousId());
            });
          });
        });
      },
    };
  }

  var client = sdk === "rudderstack" ? rudderstack() : segment();
  window.site = client;

  function $(selector) {
    return document.querySelector(selector);
  }

  function showConsentBanner() {
    var banner = $("#consent");
    banner.hidden = false;
    banner.querySelectorAll("button[data-advertising]").forEach(function (button) {
      button.onclick = function () {
        var prefs = { Analytics: true, Advertising: button.dataset.advertising === "true" };
        localStorage.setItem(CONSENT, JSON.stringify(prefs));
        banner.hidden = true;
        client.track("Consent Updated", { categories: prefs });
      };
    });
  }

  var pages = {
    home: function () {
      client.page("Site", "Home");
      $("#cta").addEventListener("click", function () {
        client.track("button_clicked", { cta_id: "hero_shop_now", label: "Shop now" });
        $("#shop").scrollIntoView();
      });
    },
    article: function () {
      var article = $("article");
      client.page("Journal", "Article", { article_id: article.dataset.articleId });
      var read = false;
      new IntersectionObserver(function (entries) {
        if (!read && entries[0].isIntersecting) {
          read = true;
          client.track("article_read", {
            article_id: article.dataset.articleId,
            title: $("h1").textContent,
          });
          $("#read-status").textContent = "Thanks for reading to the end.";
        }
      }).observe($("#article-end"));
    },
    product: function () {
      var id = query.get("id") || "p-1";
      var product = PRODUCTS[id] || PRODUCTS["p-1"];
      var props = {
        product_id: id,
        name: product.name,
        category: product.category,
        price: product.price,
      };
      $("#product-name").textContent = product.name;
      $("#product-price").textContent = "$" + product.price.toFixed(2);
      document.title = product.name + " · Trailhead Outfitters";
      client.page("Shop", "Product", { product_id: id });
      client.track("Product Viewed", Object.assign({ currency: "USD" }, props));
      var inCart = 0;
      $("#add-to-cart").addEventListener("click", function () {
        inCart += 1;
        client.track("Product Added", Object.assign({ quantity: 1 }, props));
        $("#cart-status").textContent = inCart + " in your cart";
      });
    },
    signup: function () {
      client.page("Account", "Sign up");
      $("#signup").addEventListener("submit", function (event) {
        event.preventDefault();
        var email = $("#email").value.trim();
        var userId = "user-" + Math.random().toString(36).slice(2, 10);
        client.identify(userId, { email: email, name: $("#name").value.trim() });
        client.track("Signed Up", { method: "email" });
        $("#signup").hidden = true;
        $("#welcome").hidden = false;
        $("#welcome-id").textContent = userId;
      });
    },
  };

  document.addEventListener("DOMContentLoaded", function () {
    if (!consent()) {
      showConsentBanner();
    }
    $("#privacy-choices").addEventListener("click", function (event) {
      event.preventDefault();
      showConsentBanner();
    });
    $("#sdk-name").textContent = client.name;
    var other = sdk === "rudderstack" ? "segment" : "rudderstack";
    var switched = new URL(location.href);
    switched.searchParams.set("sdk", other);
    $("#switch-sdk").href = switched.search;
    $("#switch-sdk").textContent = "Use " + (other === "segment" ? "analytics.js" : "RudderStack");
    client.anonymousId().then(function (id) {
      $("#visitor").textContent = id;
    });
    (pages[document.body.dataset.page] || function () {})();
  });
})();
