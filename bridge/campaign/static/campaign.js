/*
 * Campaign supervisor page: the campaigns list, and for the selected one its progress,
 * counts by outcome, contacts table and start/pause/resume/stop buttons.
 *
 * Polls the JSON API once a second (the next poll is scheduled only after the previous one
 * settled, so a slow bridge is never flooded). The selected campaign comes from the address:
 * /campaigns/ID or /campaigns#ID. Scripting/test API: window.CampaignPage.
 */
(function () {
  "use strict";

  var POLL_MS = 1000;
  var CONTACT_ROWS = 500; // the table shows the first rows; the note says how many exist
  var CONTACTS_MAX_AGE_MS = 10000;
  var OUTCOMES = [
    "pending", "in-progress", "answered", "voicemail", "busy", "no-answer", "failed", "dnc",
    "interrupted",
  ];
  // Which buttons make sense in which state (the server is the judge; this only helps).
  var ACTIONS = {
    draft: ["start", "stop"],
    running: ["pause", "stop"],
    paused: ["resume", "stop"],
    stopped: [],
    completed: [],
  };

  var page = {
    selected: null,
    campaigns: [],
    status: null,
    contacts: [],
    totalContacts: 0,
    contactsStamp: null,
    contactsAt: 0,
    polls: 0,
    error: "",
    refresh: refresh,
    act: act,
  };
  window.CampaignPage = page;

  function $(testId) {
    return document.querySelector('[data-testid="' + testId + '"]');
  }

  function el(tag, text, attrs) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    Object.keys(attrs || {}).forEach(function (key) {
      node.setAttribute(key, attrs[key]);
    });
    return node;
  }

  function selectedFromAddress() {
    var hash = decodeURIComponent(location.hash.replace(/^#/, ""));
    if (hash) return hash;
    var match = location.pathname.match(/^\/campaigns\/([^/]+)\/?$/);
    return match ? decodeURIComponent(match[1]) : null;
  }

  function api(path, options) {
    return fetch(path, options).then(function (response) {
      return response.text().then(function (text) {
        var body = {};
        try {
          body = text ? JSON.parse(text) : {};
        } catch (e) {
          body = { error: "HTTP " + response.status + ": " + text.slice(0, 200) };
        }
        if (!response.ok) throw new Error(body.error || "HTTP " + response.status);
        return body;
      });
    });
  }

  // The contacts table is fetched again when the campaign changed (its "updated" time), and
  // every CONTACTS_MAX_AGE_MS anyway: watching a long list costs the bridge little.
  function contactsFor(id, status) {
    var stamp = id + "@" + status.updated + "/" + status.state;
    var fresh = Date.now() - page.contactsAt < CONTACTS_MAX_AGE_MS;
    if (stamp === page.contactsStamp && fresh) return Promise.resolve(null);
    return api("/api/campaigns/" + id + "/contacts?limit=" + CONTACT_ROWS).then(function (body) {
      page.contactsStamp = stamp;
      page.contactsAt = Date.now();
      return body;
    });
  }

  function refresh() {
    page.selected = selectedFromAddress();
    var id = page.selected && encodeURIComponent(page.selected);
    var status = id
      ? api("/api/campaigns/" + id).then(function (found) {
          return Promise.all([found, contactsFor(id, found)]);
        })
      : Promise.resolve([null, null]);
    return Promise.all([api("/api/campaigns"), status]).then(
      function (results) {
        page.campaigns = results[0].campaigns;
        page.status = results[1][0];
        var rows = results[1][1];
        if (rows) {
          page.contacts = rows.contacts;
          page.totalContacts = rows.total;
        } else if (!page.status) {
          page.contacts = [];
          page.totalContacts = 0;
          page.contactsStamp = null;
        }
        page.error = "";
        page.polls += 1;
        render();
      },
      function (error) {
        page.error = error.message;
        page.polls += 1;
        render();
      }
    );
  }

  function act(action) {
    if (!page.selected) return Promise.resolve(null);
    var url = "/api/campaigns/" + encodeURIComponent(page.selected) + "/" + action;
    return api(url, { method: "POST" }).then(
      function (status) {
        page.status = status;
        page.error = "";
        render();
        return status.state;
      },
      function (error) {
        page.error = error.message;
        render();
        return null;
      }
    );
  }

  function render() {
    renderList();
    $("error").textContent = page.error;
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    var status = page.status;
    $("campaign").hidden = !status;
    $("empty").hidden = !!status;
    if (!status) return;
    $("campaign-name").textContent = status.name;
    var state = $("campaign-state");
    state.textContent = status.state;
    state.dataset.state = status.state;
    $("campaign-meta").textContent =
      "dialplan " + status.dialplan + " · caller ID " + status.caller_id +
      " · " + status.in_flight + " in flight · " + status.calls_started + " calls started";
    renderProgress(status);
    renderCounts(status.counts);
    var allowed = ACTIONS[status.state] || [];
    document.querySelectorAll("button[data-action]").forEach(function (button) {
      button.disabled = allowed.indexOf(button.dataset.action) < 0;
    });
    renderContacts();
  }

  function renderList() {
    var list = $("campaign-list");
    list.replaceChildren.apply(
      list,
      page.campaigns.map(function (c) {
        var link = el("a", c.name, {
          href: "/campaigns#" + encodeURIComponent(c.id),
          "data-testid": "campaign-item",
          "data-id": c.id,
          "aria-current": String(c.id === page.selected),
        });
        link.appendChild(el("small", c.state + " · " + c.done + "/" + c.total));
        var item = el("li");
        item.appendChild(link);
        return item;
      })
    );
  }

  function renderProgress(status) {
    var bar = $("progress");
    var percent = status.total ? Math.round((100 * status.done) / status.total) : 0;
    bar.dataset.done = status.done;
    bar.dataset.total = status.total;
    bar.firstElementChild.style.width = percent + "%";
    bar.lastElementChild.textContent = status.done + " / " + status.total + " (" + percent + "%)";
  }

  function renderCounts(counts) {
    var list = $("counts");
    list.replaceChildren.apply(
      list,
      OUTCOMES.map(function (outcome) {
        var item = el("li", outcome + " ", { "data-outcome": outcome });
        item.appendChild(el("b", counts[outcome] || 0, { "data-testid": "count-" + outcome }));
        return item;
      })
    );
  }

  function recordLinks(row) {
    var cell = el("td");
    (row.record_ids || []).forEach(function (recordId, i) {
      var base = "/api/campaigns/" + encodeURIComponent(page.selected) + "/records/" +
        encodeURIComponent(recordId) + "/";
      if (i) cell.appendChild(document.createTextNode(" "));
      cell.appendChild(el("a", "#" + (i + 1), { href: base + "call.json", target: "_blank" }));
      cell.appendChild(document.createTextNode(" "));
      cell.appendChild(el("a", "wav", { href: base + "recording.wav", target: "_blank" }));
    });
    return cell;
  }

  function renderContacts() {
    var body = $("contacts");
    body.replaceChildren.apply(
      body,
      page.contacts.map(function (row) {
        var tr = el("tr", null, {
          "data-testid": "contact-row",
          "data-contact-id": row.contact_id,
          "data-status": row.status,
        });
        var collected = Object.keys(row.collected || {}).map(function (key) {
          return key + "=" + row.collected[key];
        });
        var due = row.next_due ? new Date(row.next_due * 1000).toLocaleTimeString() : "";
        [row.line, row.to, row.status, row.attempts, row.outcome || "",
         row.last_sip_status || "", row.amd || ""].forEach(function (value) {
          tr.appendChild(el("td", value));
        });
        var cell = el("td", null, { "data-testid": "collected" });
        cell.appendChild(el("code", collected.join(" ")));
        tr.appendChild(cell);
        tr.appendChild(recordLinks(row));
        tr.appendChild(el("td", due));
        return tr;
      })
    );
    var shown = page.contacts.length;
    $("contacts-note").textContent =
      shown < page.totalContacts ? "showing " + shown + " of " + page.totalContacts : "";
  }

  function poll() {
    refresh().then(function () {
      setTimeout(poll, POLL_MS);
    });
  }

  document.querySelectorAll("button[data-action]").forEach(function (button) {
    button.addEventListener("click", function () {
      act(button.dataset.action);
    });
  });
  window.addEventListener("hashchange", refresh);
  poll();
})();
