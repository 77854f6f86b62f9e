// eclip product search page: plain JavaScript over the service's JSON API (no build step).
"use strict";

const RESULTS = 24;
const $ = (id) => document.getElementById(id);
let lastPhoto = null; // the photo of the current results, when they came from a photo search

async function api(path, options) {
  const response = await fetch(path, options);
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = null;
  }
  if (!response.ok) {
    const detail = body && body.detail;
    throw new Error(typeof detail === "string" ? detail : `request failed (HTTP ${response.status})`);
  }
  return body;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setSummary(text) {
  $("summary").textContent = text;
}

function card(result) {
  const node = $("card-template").content.firstElementChild.cloneNode(true);
  node.dataset.productId = result.product_id;
  const img = node.querySelector(".photo");
  if (result.image_url) {
    img.src = result.image_url;
    img.alt = result.title;
  } else {
    img.remove();
  }
  node.querySelector(".title").textContent = result.title;  // cleaned by the API
  if (result.raw_title && result.raw_title !== result.title) {
    node.querySelector(".raw").hidden = false;  // the seller's title, as the catalog has it
    node.querySelector(".raw-title").textContent = result.raw_title;
  }
  node.querySelector(".category").textContent = result.category || "no category";
  node.querySelector(".score").textContent = `score ${result.score.toFixed(3)}`;
  node.querySelector(".badge").hidden = !result.same_catalog;
  const more = node.querySelector(".more");
  more.href = `#similar=${encodeURIComponent(result.product_id)}`;
  more.title = `listings like ${result.title}`;
  return node;
}

function render(results) {
  const grid = $("results");
  grid.replaceChildren(...results.map(card));
}

function renderClassification(data) {
  const box = $("classification");
  box.replaceChildren();
  const head = document.createElement("strong");
  head.textContent = "Predicted categories";
  const list = document.createElement("ol");
  for (const item of data.categories) {
    const li = document.createElement("li");
    li.textContent = `${item.category} (${(100 * item.score).toFixed(0)}%)`;
    list.append(li);
  }
  const adult = document.createElement("p");
  adult.className = "adult";
  adult.textContent = data.adult_probability === null
    ? "adult probability: unknown (no adult labels in the index)"
    : `adult probability: ${(100 * data.adult_probability).toFixed(1)}%`;
  box.append(head, list, adult);
  box.hidden = false;
}

function filters() {
  return {
    category: $("category").value || null,
    against: $("against").value || null,
    mode: $("mode").value || null,
    // safe search: "hide adult listings" sends adult=false; unchecked sends no adult filter
    adult: $("hide-adult").checked ? false : null,
  };
}

async function searchText(query) {
  const { category, against, mode, adult } = filters();
  const body = { query, k: RESULTS };
  if (category) body.category = category;
  if (adult !== null) body.adult = adult;
  if (against) body.against = against;
  if (mode) body.mode = mode;
  $("classification").hidden = true;
  setSummary(`searching for “${query}”…`);
  const data = await api("/search/text", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  render(data.results);
  setSummary(`${data.results.length} results for “${query}” ` +
             `(${data.mode}, ${data.took_ms.toFixed(0)} ms)`);
}

async function searchPhoto(file) {
  const { category, against, adult } = filters();
  const form = new FormData();
  form.append("file", file);
  form.append("k", String(RESULTS));
  if (category) form.append("category", category);
  if (adult !== null) form.append("adult", String(adult));
  if (against) form.append("against", against);
  setSummary(`searching by photo ${file.name}…`);
  const data = await api("/search/image", { method: "POST", body: form });
  render(data.results);
  setSummary(`${data.results.length} results for photo ${file.name} (${data.took_ms.toFixed(0)} ms)`);
  const classifyForm = new FormData();
  classifyForm.append("file", file);
  renderClassification(await api("/classify", { method: "POST", body: classifyForm }));
}

async function moreLike(productId) {
  $("classification").hidden = true;
  const { adult } = filters();
  const safe = adult === null ? "" : `&adult=${adult}`;
  const data = await api(`/similar/${encodeURIComponent(productId)}?k=${RESULTS}${safe}`);
  render(data.results);
  setSummary(`More like: ${data.product.title}`);
}

async function route() {
  const params = new URLSearchParams(window.location.hash.slice(1));
  lastPhoto = null;
  showError("");
  try {
    if (params.has("similar")) {
      await moreLike(params.get("similar"));
    } else if (params.has("q")) {
      $("query").value = params.get("q");
      await searchText(params.get("q"));
    }
  } catch (err) {
    showError(err.message);
  }
}

async function start() {
  try {
    const health = await api("/health");
    $("status").textContent = `${health.listings} listings · index ${health.generation}`;
    const select = $("category");
    for (const item of await api("/categories")) {
      const option = document.createElement("option");
      option.value = item.category;
      option.textContent = `${item.category} (${item.count})`;
      select.append(option);
    }
  } catch (err) {
    showError(`the search service is not answering: ${err.message}`);
  }
  await route();
}

$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const query = $("query").value.trim();
  if (!query) return;
  const hash = `#q=${encodeURIComponent(query)}`;
  if (window.location.hash === hash) {
    route();
  } else {
    window.location.hash = hash;
  }
});

$("photo").addEventListener("change", async () => {
  const file = $("photo").files[0];
  if (!file) return;
  showError("");
  try {
    lastPhoto = file;
    await searchPhoto(file);
    $("photo").value = "";
  } catch (err) {
    showError(err.message);
  }
});

$("mode").addEventListener("change", () => {
  if (new URLSearchParams(window.location.hash.slice(1)).has("q")) route();
});

// toggling safe search re-runs what is on screen: the photo search, or the query / "more like"
$("hide-adult").addEventListener("change", async () => {
  if (lastPhoto) {
    showError("");
    try {
      await searchPhoto(lastPhoto);
    } catch (err) {
      showError(err.message);
    }
    return;
  }
  const params = new URLSearchParams(window.location.hash.slice(1));
  if (params.has("q") || params.has("similar")) route();
});

window.addEventListener("hashchange", route);
start();
